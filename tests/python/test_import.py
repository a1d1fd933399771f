"""`import cellvi` stays light: no rpy2, no matplotlib, and the public names are there."""
import subprocess
import sys


def test_import_is_light_and_exports_the_models():
    code = (
        "import sys, cellvi; "
        "assert cellvi.SCVI.__name__ == 'SCVI' and cellvi.LinearSCVI.__name__ == 'LinearSCVI'; "
        "heavy = [m for m in ('rpy2', 'matplotlib', 'sklearn', 'scanpy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
