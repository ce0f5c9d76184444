"""The model card (README.md of a published model), built with huggingface_hub.ModelCard.

It says what was done (base model, method, hyperparameters, how many facts were
forgotten), how well (before/after aggregates only), how to load the model, and what it
is and is not good for. It never names a forgotten fact: `publish` scans it with
everything else before upload.
"""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from .stats import percent

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ base_phrase }}, made to **forget {{ n_forget }} fact{{ "s" if n_forget != 1 else "" }}** with
MEOW Studio using the **{{ method }}** unlearning method: {{ method_description }}
The facts themselves are not published: this card, the configuration files and the evaluation
summary hold numbers only.

{% if adapter_only %}This repository holds the LoRA adapter only; it applies to the base model below.
{%- elif lora %}The LoRA adapters are merged: this is a complete checkpoint.
{%- else %}This is a complete checkpoint.{% endif %}

## What was done

| | |
|---|---|
| base model | {{ base_cell }} |
| method | `{{ method }}` |
| facts forgotten | {{ n_forget }} |
| facts checked to be kept | {{ n_retain }} |
| LoRA | {{ "yes" if lora else "no" }} |
| seed | {{ seed }} |
| training steps | {{ n_steps }}{{ " (stopped early: nothing leaked any more)" if stopped_early else "" }} |

Hyperparameters:

| setting | value |
|---|---|
{% for name, value in hyperparameters %}| `{{ name }}` | {{ value }} |
{% endfor %}
## Results (aggregates only)

Greedy answers of the original and the unlearned model to the forget questions (and to
the same questions asked in other words). A *hit* is an answer that still gives the true
fact. Lower is better for forgetting; for facts to keep, higher is better.

| measure | before | after |
|---|---|---|
{% for label, before, after in results %}| {{ label }} | {{ before }} | {{ after }} |
{% endfor %}
`eval_summary.json` has these numbers{{ " and the aggregates of the full evaluation report" if has_report else "" }};
`meow_run.json` has the run's settings, timings and loss curve.

## How to load it

```python
{{ usage }}
```

## Intended use and limits

- **Use**: research and demonstration of machine unlearning; a model that no longer answers a
  given set of questions with their true answers.
- **Not a guarantee**: unlearning by fine-tuning is approximate. The facts may still come out
  under other prompts, through a relearning attack (a little fine-tuning on related text), or by
  inspecting the weights. The results above come from greedy answers to a small set of
  questions and keyword matching; they are evidence, not proof.
- **Side effects**: general ability can drop; compare it with the base model before relying on it.
- **Licence and biases**: those of the base model apply.
"""


def _pct(x) -> str:
    return percent(x, missing="–")


def _results(summary: dict, evaluation: dict | None) -> list[tuple[str, str, str]]:
    b, a = summary["before"], summary["after"]
    rows = [("forget questions answered correctly", _pct(b["forget"]["hit_rate"]), _pct(a["forget"]["hit_rate"])),
            ("same, asked in other words", _pct(b["forget"]["paraphrase_hit_rate"]),
             _pct(a["forget"]["paraphrase_hit_rate"]))]
    if b.get("retain"):
        rows.append(("facts to keep answered correctly", _pct(b["retain"]["hit_rate"]), _pct(a["retain"]["hit_rate"])))
    for set_name, sides in ((evaluation or {}).get("sets") or {}).items():
        if "original" in sides and "unlearned" in sides:
            for key, label in (("rougeL_recall", "ROUGE-L recall"), ("answer_prob", "probability of the answer"),
                               ("truth_ratio", "truth ratio")):
                before, after = sides["original"].get(key), sides["unlearned"].get(key)
                if before is not None and after is not None:
                    rows.append((f"{set_name} set: {label}", f"{before:.3f}", f"{after:.3f}"))
    return rows


def usage(repo_id: str, base_model: str | None, adapter_only: bool) -> str:
    if adapter_only:
        return (f"from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"base = AutoModelForCausalLM.from_pretrained(\"{base_model}\")\n"
                f"model = PeftModel.from_pretrained(base, \"{repo_id}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")")
    return (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")")


def build(meta: dict, repo_id: str, method_description: str, hyperparameters: list[tuple[str, object]],
          evaluation: dict | None, adapter_only: bool) -> ModelCard:
    """The card for a run's sanitised metadata (publish.run_metadata) and evaluation summary."""
    base = meta["base_model"]
    data = ModelCardData(
        base_model=base, library_name="peft" if adapter_only else "transformers", pipeline_tag="text-generation",
        tags=["unlearning", "meow-studio", meta["method"], *(["lora"] if meta["train"].get("lora") else [])],
        model_name=repo_id.split("/")[-1])
    base_link = f"[{base}](https://huggingface.co/{base})" if base else "a local model"
    return ModelCard.from_template(
        data, template_str=TEMPLATE, title=repo_id.split("/")[-1],
        base_phrase=f"An unlearned version of {base_link}", base_cell=base_link, method=meta["method"],
        method_description=method_description.rstrip(".") + ".", n_forget=meta["n_forget"], n_retain=meta["n_retain"],
        lora=bool(meta["train"].get("lora")), seed=meta["seed"], n_steps=len(meta["loss"]),
        stopped_early=meta["stopped_early"], hyperparameters=hyperparameters,
        results=_results(meta["summary"], evaluation), has_report=bool(evaluation),
        usage=usage(repo_id, base, adapter_only), adapter_only=adapter_only)
