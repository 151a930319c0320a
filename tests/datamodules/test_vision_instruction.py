"""VisionInstructionDataModule: answer-only masking with images, image-token/feature consistency, the
over-long policy, record validation, review filtering. Uses the tiny Qwen2.5-VL processor (local tokenizer
+ the family's special tokens + the PIL image processor); no model."""

import json

import numpy as np
import pytest
from PIL import Image

from datamodules.records import RecordError
from datamodules.vision_instruction import VisionCollator, VisionInstructionDataModule, encode_sample
from modules.backbone import BackboneSpec
from modules.processor import load_vision_processor
from tests.conftest import TOKENIZER, write_jsonl
from datamodules.batch import BatchSpec

QUESTION = "Raise an alert if any worker is missing a helmet or a safety vest."
ANSWER = "Worker 2 wears an orange T-shirt without reflective stripes. Alert: True"


@pytest.fixture(scope="module")
def proc():
    spec = BackboneSpec(name_or_path="Qwen/Qwen2.5-VL-32B-Instruct", arch_config="configs/models/qwen2.5-vl-32b",
                        tokenizer=str(TOKENIZER), tiny=True)
    return load_vision_processor(spec)[0]


def image(path, size=(160, 120), mode="RGB", color=(200, 120, 40)):
    Image.new(mode, size, color if mode == "RGB" else 7).save(path)
    return path.name


def dataset(tmp_path, rows, **kwargs):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    return path, VisionInstructionDataModule(train_file=str(path), val_file=str(path), test_file=str(path),
                                             batch=BatchSpec(2, 2), cache_dir=str(tmp_path / "cache"), **kwargs)


def prepared(proc, dm, split="train"):
    dm.processor = proc
    dm.collate_fn = VisionCollator(proc, dm.min_pixels, dm.max_pixels)
    return dm._prepare(split, need_answers=True)


def test_loss_is_on_the_answer_only_with_exact_positions(proc):
    n_img = proc.num_image_tokens(160, 120)
    sample = encode_sample({"image": "x.png", "question": QUESTION, "answer": ANSWER}, proc, n_img)
    ids, labels, prompt = sample["input_ids"], sample["labels"], sample["prompt_ids"]
    tok = proc.tokenizer
    # Exact layout: the prompt (system, user with the expanded image, assistant header) then the answer turn.
    expected_prompt = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        tokenize=False, add_generation_prompt=True).replace(proc.image_token, proc.image_token * n_img)
    assert prompt == tok(expected_prompt, add_special_tokens=False)["input_ids"]
    assert ids[:len(prompt)] == prompt
    answer_ids = tok(ANSWER + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert ids[len(prompt):] == answer_ids
    trained = [i for i, l in enumerate(labels) if l != -100]
    assert trained == list(range(len(prompt), len(ids)))  # every answer token and nothing else
    assert [labels[i] for i in trained] == answer_ids
    image_positions = [i for i, t in enumerate(ids) if t == proc.image_token_id]
    # 160x120 is resized to multiples of 28 (168x112): 12x8 patches of 14 px, merged 2x2 into 6x4 = 24 tokens.
    assert len(image_positions) == n_img == 24
    assert image_positions == list(range(image_positions[0], image_positions[0] + n_img))  # contiguous
    assert all(labels[i] == -100 for i in image_positions)
    # The image sits between vision start/end markers at the start of the user turn.
    start = tok.convert_tokens_to_ids("<|vision_start|>")
    assert ids[image_positions[0] - 1] == start
    assert ids[image_positions[-1] + 1] == tok.convert_tokens_to_ids("<|vision_end|>")
    assert sample["reference"] == ANSWER


def test_multi_turn_messages_train_every_assistant_turn(proc):
    record = {"image": "x.png", "messages": [
        {"role": "system", "content": "You inspect construction sites."},
        {"role": "user", "content": "How many workers?"}, {"role": "assistant", "content": "Three."},
        {"role": "user", "content": "Alert?"}, {"role": "assistant", "content": "Alert: False"}]}
    sample = encode_sample(record, proc, 4)
    tok = proc.tokenizer
    trained_text = tok.decode([l for l in sample["labels"] if l != -100])
    assert trained_text == "Three.<|im_end|>\nAlert: False<|im_end|>\n"
    assert "You inspect construction sites." in tok.decode(sample["input_ids"])
    assert "You are a helpful assistant" not in tok.decode(sample["input_ids"])  # the record's system turn wins
    assert tok.decode(sample["prompt_ids"]).endswith("Alert?<|im_end|>\n<|im_start|>assistant\n")


def test_image_tokens_match_the_processor_features_for_every_size(proc, tmp_path):
    sizes = [(112, 112), (224, 150), (131, 197), (60, 40), (400, 90)]
    rows = [{"id": f"r{i}", "image": image(tmp_path / f"i{i}.png", size), "question": QUESTION, "answer": ANSWER}
            for i, size in enumerate(sizes)]
    for bounds in [(None, None), (56 * 56, 112 * 112), (3136, 28 * 28 * 20)]:
        _, dm = dataset(tmp_path, rows, min_pixels=bounds[0], max_pixels=bounds[1])
        ds = prepared(proc, dm)
        batch = dm.collate_fn([ds[i] for i in range(len(ds))])
        per_image = proc.tokens_per_image(batch["image_grid_thw"])
        found = (batch["input_ids"] == proc.image_token_id).sum(-1).tolist()
        assert found == per_image
        assert (batch["prompt_ids"] == proc.image_token_id).sum(-1).tolist() == per_image
        # One feature row per patch: grid t*h*w rows of pixel values in all.
        assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
        if bounds[1] is not None:
            assert max(per_image) <= bounds[1] // (28 * 28)
        # Labels never cover image tokens; left-padded prompts end where the answer begins.
        assert not ((batch["labels"] != -100) & (batch["input_ids"] == proc.image_token_id)).any()
        assert batch["prompt_mask"][:, -1].all()


def test_a_changed_image_is_caught_when_the_batch_is_built(proc, tmp_path):
    rows = [{"id": "a", "image": image(tmp_path / "a.png", (112, 112)), "question": QUESTION, "answer": ANSWER}]
    path, dm = dataset(tmp_path, rows)
    ds = prepared(proc, dm)
    image(tmp_path / "a.png", (224, 224))  # replaced after tokenization
    with pytest.raises(RecordError) as e:
        dm.collate_fn([ds[0]])
    assert f"{path}:1" in str(e.value) and "'image'" in str(e.value) and "changed" in str(e.value)


def test_overlong_samples_error_by_default_and_are_skipped_on_request(proc, tmp_path):
    rows = [{"id": "short", "image": image(tmp_path / "s.png", (112, 112)), "question": "Alert?", "answer": "Alert: False"},
            {"id": "long", "image": image(tmp_path / "l.png", (224, 224)), "question": QUESTION, "answer": ANSWER}]
    short_len = len(encode_sample(rows[0], proc, proc.num_image_tokens(112, 112))["input_ids"])
    long_len = len(encode_sample(rows[1], proc, proc.num_image_tokens(224, 224))["input_ids"])
    cutoff = (short_len + long_len) // 2
    path, dm = dataset(tmp_path, rows, cutoff_len=cutoff)
    with pytest.raises(RecordError) as e:
        prepared(proc, dm)
    assert str(e.value).startswith(f"{path}:2: ") and f"cutoff_len={cutoff}" in str(e.value)
    path, dm = dataset(tmp_path, rows, cutoff_len=cutoff, overlong="skip")
    ds = prepared(proc, dm)
    assert len(ds) == 1 and ds.column("id") == ["short"]
    assert dm.report["train"]["overlong_skipped"] == 1
    assert len(ds[0]["input_ids"]) == short_len  # kept samples are never cut


@pytest.mark.parametrize("mutate, field, words", [
    (lambda r, d: r.update(image="missing.png"), "image", "not found"),
    (lambda r, d: ((d / "bad.png").write_bytes(b"not an image"), r.update(image="bad.png")), "image", "unreadable"),
    (lambda r, d: Image.fromarray(np.zeros((20, 20), dtype=np.uint16)).save(d / "i16.png")  # 16-bit grey
     or r.update(image="i16.png"), "image", "unsupported image mode 'I"),
    (lambda r, d: r.update(answer="  "), "answer", "empty answer"),
    (lambda r, d: r.update(type="E"), "type", "unknown QA type 'E'"),
    (lambda r, d: r.update(alert="yes"), "alert", "'yes'"),
    (lambda r, d: r.update(review="maybe"), "review", "unknown review state"),
    (lambda r, d: r.pop("image"), "image", "expected an image path"),
])
def test_bad_records_name_file_line_and_field(proc, tmp_path, mutate, field, words):
    rows = [{"id": f"r{i}", "image": image(tmp_path / f"ok{i}.png"), "question": QUESTION, "answer": ANSWER,
             "type": "A", "alert": True, "review": "accepted"} for i in range(3)]
    mutate(rows[1], tmp_path)
    path, dm = dataset(tmp_path, rows)
    with pytest.raises(RecordError) as e:
        prepared(proc, dm)
    assert str(e.value).startswith(f"{path}:2: field '{field}': ")
    assert words in str(e.value)


def test_messages_need_an_assistant_answer_and_a_user_turn(proc, tmp_path):
    img = image(tmp_path / "a.png")
    for messages, field in [([{"role": "user", "content": "Alert?"}, {"role": "assistant", "content": ""}],
                             "messages[1].content"),
                            ([{"role": "assistant", "content": "Alert: True"}], "messages"),
                            ([{"role": "user", "content": "Alert?"}], "messages")]:
        path, dm = dataset(tmp_path, [{"id": "m", "image": img, "messages": messages}])
        with pytest.raises(RecordError) as e:
            prepared(proc, dm)
        assert str(e.value).startswith(f"{path}:1: field '{field}'")


def test_unreviewed_drafts_are_left_out_of_training_only(proc, tmp_path):
    rows = [{"id": f"r{i}", "image": image(tmp_path / f"r{i}.png"), "question": QUESTION, "answer": ANSWER,
             "review": review} for i, review in enumerate(["accepted", "pending", "edited", "rejected"])]
    _, dm = dataset(tmp_path, rows)
    train = prepared(proc, dm, "train")
    assert train.column("id") == ["r0", "r2"] and dm.report["train"]["unreviewed_skipped"] == 2
    assert len(prepared(proc, dm, "val")) == 4  # evaluation keeps every record
    _, dm = dataset(tmp_path, rows, reviewed_only=False)
    assert len(prepared(proc, dm, "train")) == 4


def test_images_are_converted_to_rgb_and_alpha_goes_on_white(proc, tmp_path):
    Image.new("RGBA", (120, 120), (255, 0, 0, 0)).save(tmp_path / "t.png")
    Image.new("L", (120, 120), 40).save(tmp_path / "g.png")
    rows = [{"id": "t", "image": "t.png", "question": QUESTION, "answer": ANSWER},
            {"id": "g", "image": "g.png", "question": QUESTION, "answer": ANSWER}]
    _, dm = dataset(tmp_path, rows)
    ds = prepared(proc, dm)
    assert ds[0]["image"].mode == "RGB" and ds[0]["image"].getpixel((5, 5)) == (255, 255, 255)
    assert ds[1]["image"].getpixel((5, 5)) == (40, 40, 40)


def test_tokenization_is_cached(proc, tmp_path):
    rows = [{"id": "a", "image": image(tmp_path / "a.png"), "question": QUESTION, "answer": ANSWER}]
    path, dm = dataset(tmp_path, rows)
    first = prepared(proc, dm).records
    dm = VisionInstructionDataModule(train_file=str(path), batch=BatchSpec(2, 2), cache_dir=str(tmp_path / "cache"))
    second = prepared(proc, dm).records
    assert [f["filename"] for f in first.cache_files] == [f["filename"] for f in second.cache_files]
    assert json.dumps(first[0]["input_ids"]) == json.dumps(second[0]["input_ids"])
