"""Cold start: the CLI's parser, its --help and the client path import no torch, diffusers or other heavy library;
a one-shot classify on a bundled model imports no diffusers or transformers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "triton", "onnx", "onnxruntime", "scipy", "sklearn", "matplotlib")


def run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_cli_parser_and_help_import_nothing_heavy():
    p = run(
        "import sys\n"
        "from diffcls_fast.cli import build_parser\n"
        "ap = build_parser(); ap.format_help()\n"
        "[sp.format_help() for a in ap._subparsers._group_actions for sp in a.choices.values()]\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_classify_with_a_server_imports_no_torch():
    # nothing listens on port 9: the client's one-line error, and no torch on the way there
    p = run(
        "import sys\n"
        "from diffcls_fast.cli import main\n"
        "rc = main(['classify', '--server', 'http://127.0.0.1:9', 'examples/digit-7.png'])\n"
        f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert p.stdout.strip() == "2 []", (p.stdout, p.stderr)
    assert p.stderr.startswith("diffcls-fast: error: cannot reach the server at http://127.0.0.1:9")


def test_the_public_api_still_imports_from_the_package():
    p = run(
        "import diffcls_fast\nfrom diffcls_fast import ClassSpec, ClassificationResult, DiffclsWarning,"
        " DiffusionClassifier, ModelBundle, UserError, load_model, __version__\nfrom diffcls_fast.engine import Engine,"
        " RunStats, parse_class_list, read_prompts_csv\nassert set(diffcls_fast.__all__) <="
        " set(dir(diffcls_fast))\nassert DiffusionClassifier.__module__ == 'diffcls_fast.engine.classifier'\ntry:\n   "
        " diffcls_fast.nope\nexcept AttributeError as e:\n    print('AttributeError', e)\n"
    )
    assert p.returncode == 0, p.stderr
    assert "AttributeError module 'diffcls_fast' has no attribute 'nope'" in p.stdout


def test_a_missing_serve_extra_is_one_line_naming_it():
    # sys.modules[name] = None makes 'import name' fail, as if the package were not installed
    p = run(
        "import sys\n"
        "sys.modules['uvicorn'] = None; sys.modules['httpx'] = None\n"
        "from diffcls_fast.cli import main\n"
        "a = main(['serve', '--port', '0'])\n"
        "b = main(['classify', '--server', 'http://127.0.0.1:9', 'examples/digit-7.png'])\n"
        "print(a, b)\n"
    )
    assert p.stdout.strip() == "2 2", p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines == [
        "diffcls-fast: error: the server needs uvicorn; pip install 'diffcls-fast[serve]'",
        "diffcls-fast: error: the client needs httpx; pip install 'diffcls-fast[serve]'",
    ]


@pytest.mark.parametrize("model", ["digits", "numbers"])
def test_classify_on_a_bundled_model_imports_no_diffusers_or_transformers(model):
    """The bundled models run on the native modules: the whole one-image path (parse, load, encode the
    prompts, classify, print) stays clear of the libraries that cost seconds to import."""
    p = run(
        "import sys\n"
        "from diffcls_fast.cli import main\n"
        f"args = ['examples/digit-7.png', '--model', {model!r}, '--no-cache', '--min-scores', '3']\n"
        "args += ['--max-scores', '6']\n"
        "rc = main(['classify', *args])\n"
        "libs = ('diffusers', 'transformers', 'tokenizers', 'accelerate', 'huggingface_hub', 'torch._dynamo')\n"
        "print(rc, sorted(m for m in libs if m in sys.modules))\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "0 []", p.stdout
    assert f"# {model} [torch, native, float32, cpu]" in p.stderr
