"""10-llm-instruction-tuning: one finished run whose held-out loss fell; the test rates and their Wilson
intervals, recomputed here from the logged answers with a parser of our own, show the tuned model ahead of
the base model; the adapter holds LoRA weights only, trained; the base weights' SHA-256 is the same before
and after, and is the hash of the packaged model computed here; and the adapter from the run, loaded here
onto a fresh base model, answers the logged prompts with the logged tokens."""

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
import torch

from tests.notebooks.checks.t05_validation import wilson
from tests.notebooks.lifecycle import Execution, the_run

NEEDS: tuple[str, ...] = ()
TEMPLATE = "10-llm-instruction-tuning"
KEYS = ("valid_json_rate", "topic_accuracy")


def smoke(upstream: dict[str, Execution]) -> dict:
    return {"size": "smoke"}


def check(execution: Execution) -> None:
    client = execution.client
    run = the_run(execution)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["size"] == "smoke"
    assert params["site_models_dir"] == "", "the smoke run tunes the packaged SmolLM2"
    folder = execution.workdir / "check-downloads"
    folder.mkdir()

    # The held-out loss: measured before training (step 0) and at the last step, lower there.
    history = sorted(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)
    steps = [m.step for m in history]
    assert steps[0] == 0 and steps[-1] == int(params["steps"]) > 0, steps
    assert history[-1].value < history[0].value, [(m.step, m.value) for m in history]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == int(params["steps"])

    assert_rates_follow_from_the_answers(client, run, folder)
    assert_adapter_is_lora_only(client, run, folder, params)

    # The base weights: unchanged, and they are the packaged model's (hashed here, in the same way).
    before, after = tags["werkbank.base_weights_sha256.before"], tags["werkbank.base_weights_sha256.after"]
    assert before == after, (before, after)
    base, tokenizer = load_base()
    assert base_weights_sha256(base) == before, "the logged hash is not that of the packaged SmolLM2"

    assert_reloaded_adapter_answers_as_logged(client, run, folder, base, tokenizer)
    assert metrics["reload_identical"] == 1.0


def parse(answer: str, topics: set[str]) -> dict | None:
    """The answer as a JSON object with exactly the keys topic (one of ``topics``) and headline, or None."""
    try:
        value = json.loads(answer)
    except ValueError:
        return None
    if not isinstance(value, dict) or sorted(value) != ["headline", "topic"]:
        return None
    headline = value["headline"]
    if value["topic"] not in topics or not isinstance(headline, str) or not headline.strip():
        return None
    return value


def assert_rates_follow_from_the_answers(client, run, folder: Path) -> None:
    """The logged rates and Wilson intervals (SciPy's) are what the logged answers give, for both models on
    the same test articles; and the tuned model is ahead on both."""
    params, metrics = run.data.params, run.data.metrics
    topics = set(params["topics"].split(","))
    answers = pd.read_csv(
        client.download_artifacts(run.info.run_id, "predictions.csv", str(folder)), keep_default_na=False
    )
    tested = pd.read_csv(client.download_artifacts(run.info.run_id, "data/test.csv", str(folder)))
    assert list(answers["document"]) == list(tested["document"]), "the answers are not the test articles'"
    assert len(answers) == len(topics) * int(params["test_per_class"]) == metrics["test_articles"]
    level = float(params["confidence_level"])
    for name in ("base", "tuned"):
        parsed = [parse(str(answer), topics) for answer in answers[f"{name}_answer"]]
        valid = pd.Series([p is not None for p in parsed])
        right = pd.Series(
            [p is not None and p["topic"] == t for p, t in zip(parsed, answers["topic"], strict=True)]
        )
        for key, hits in (("valid_json_rate", valid), ("topic_accuracy", right)):
            low, high = wilson(hits.to_numpy(), level)
            got = [metrics[f"{name}_{key}{end}"] for end in ("", "_ci_low", "_ci_high")]
            expected = [hits.mean(), low, high]
            agree = [math.isclose(g, e, abs_tol=1e-9) for g, e in zip(got, expected, strict=True)]
            assert all(agree), (name, key, got, expected)
    for key in KEYS:
        tuned, base = metrics[f"tuned_{key}"], metrics[f"base_{key}"]
        assert tuned > base, f"{key}: the tuned model's {tuned} does not beat the base model's {base}"


def assert_adapter_is_lora_only(client, run, folder: Path, params: dict) -> None:
    """The adapter artifact: LoRA of the logged rank on the logged layers, its weights LoRA's only (no copy
    of the base model), and trained (LoRA's B matrices start at zero)."""
    from safetensors.torch import load_file

    files = {item.path for item in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= files, files
    local = Path(client.download_artifacts(run.info.run_id, "adapter", str(folder)))
    config = json.loads((local / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == int(params["lora_r"]), config
    assert sorted(config["target_modules"]) == sorted(params["lora_target_modules"].split(",")), config
    weights = load_file(local / "adapter_model.safetensors")
    assert weights and all("lora_" in key for key in weights), sorted(weights)[:5]
    targets = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in weights}
    assert targets == set(config["target_modules"]), targets
    trained = [key for key, value in weights.items() if "lora_B" in key and value.abs().max() > 0]
    assert trained, "every LoRA B matrix is zero, as before training: the adapter learned nothing"


def load_base():
    from werkbank_lab import local_models

    return local_models.load()


def base_weights_sha256(model) -> str:
    """The notebook's hash of a base model's state dict, written here again: names, dtypes, shapes, bytes."""
    state = {
        name.removeprefix("base_model.model.").replace(".base_layer.", "."): tensor
        for name, tensor in model.state_dict().items()
        if "lora_" not in name
    }
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def assert_reloaded_adapter_answers_as_logged(client, run, folder: Path, base, tokenizer) -> None:
    """The adapter from the run on the packaged base model, here in the test's process: its greedy answers to
    the logged prompts (one batch, padded on the left) are the logged tokens of the tuned model."""
    from peft import PeftModel

    path = client.download_artifacts(run.info.run_id, "reload_check.json", str(folder))
    logged = json.loads(Path(path).read_text())
    assert len(logged["prompts"]) == int(run.data.params["reload_prompts"]) == len(logged["tokens"])
    model = PeftModel.from_pretrained(base, str(folder / "adapter")).eval()
    tokenizer.padding_side = "left"
    batch = tokenizer(logged["prompts"], return_tensors="pt", padding=True, add_special_tokens=False)
    threads = torch.get_num_threads()
    # The notebook's thread count: the same arithmetic, as near as can be.
    torch.set_num_threads(int(run.data.params["torch_threads"]))
    try:
        with torch.inference_mode():
            generated = model.generate(
                **batch,
                max_new_tokens=int(run.data.params["max_new_tokens"]),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
    finally:
        torch.set_num_threads(threads)
    answers = generated[:, batch["input_ids"].shape[1] :].tolist()
    for row, expected in zip(answers, logged["tokens"], strict=True):
        answer = row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
        assert answer == expected, (tokenizer.decode(answer), tokenizer.decode(expected))
