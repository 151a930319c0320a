"""modules/alerts.py: the alert decision parsed from English and Korean answers (a table of phrasings), and
AlertStats / alert_summary against scikit-learn with unparseable outputs as a third class."""

from __future__ import annotations

import os
import random
import socket

import pytest
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from modules.alerts import ALERT_KEYS, AlertStats, alert_summary, parse_alert

# ------------------------------------------------------------------------------------------------ parsing

PHRASINGS = [
    # explicit key/value, English
    ("Alert: True", True),
    ("Alert: False", False),
    ("alert:true", True),
    ("(Alert : True)", True),
    ("[Alert: False]", False),
    ("**Alert**: False", False),
    ("**Alert: True**", True),
    ("- `Alert`: True", True),
    ("Alert = yes", True),
    ("Alert: No", False),
    ("Alert: No.\nReason: every worker wears a helmet and a vest.", False),
    ("ALERT - TRUE", True),
    ("Alert -> False", False),
    ("Alert：　Ｔｒｕｅ", True),  # full-width colon and letters
    ("Alert: 1", True),
    ("Alert: 0", False),
    ("Alert: True (worker 3 wears an orange T-shirt, not a vest)", True),
    ("Alert: Yes, worker 2 has no helmet.", True),
    ("Alert: not needed", False),
    ("Alert: None", False),
    ("Raise an alert: yes", True),
    ("Raise an alert: No", False),
    ("Should an alert be raised? Yes.", True),
    ("Alert decision: False", False),
    ("Decision: alert", True),
    ("Decision: no alert", False),
    ("Final decision: Raise alert", True),
    ("Decision: Alert: False", False),  # the key inside the value is the decision
    ("Worker 2 wears an orange T-shirt without reflective stripes.\nAlert: True", True),
    # explicit key/value, Korean
    ("경보: 예", True),
    ("경보: 아니오", False),
    ("알림: 필요", True),
    ("알림: 불필요", False),
    ("경고: True", True),
    ("알람: 예", True),
    ("알람: 아니요", False),
    ("경보 여부: 발령", True),
    ("경보 발령 여부: 미발령", False),
    ("경보: 필요 없음", False),
    ("경보 발령: 아니오", False),
    ("판단: 경보 발령", True),
    # last wins; quoted or conditional decisions rank below plain ones
    ("Alert: False\nAlert: True", True),
    ("The output was 'Alert: False' although worker 2 lacks a vest.\nCorrected output:\nAlert: True", True),
    ("Alert: False\n\nFailure analysis: the reasoning found no vest on worker 2, so the correct answer is Alert: True",
     True),
    ("Alert: True\nIf worker 2 wore a vest, it would be Alert: False.", True),
    ("Correct answer: Alert: True, not the original \"Alert: False\".", True),
    ("경보: 예\n만약 작업자가 조끼를 입었다면 경보: 아니오.", True),
    ("Alert: True. No alert would be needed if he wore a helmet.", True),  # explicit wins over free phrasing
    # free phrasing, English
    ("No alert is needed.", False),
    ("An alert should be raised.", True),
    ("no alert should be raised", False),
    ("Raise an alert: worker 2 is not wearing a helmet.", True),
    ("I will not raise an alert: everyone complies.", False),
    ("We don't need to raise an alert.", False),
    ("There is no need to raise an alert.", False),
    ("An alert isn't necessary here.", False),
    ("An alert is not required because all workers wear vests.", False),
    ("This warrants an alert.", True),
    # free phrasing, Korean
    ("경보 필요 없음", False),
    ("경보를 발령해야 합니다.", True),
    ("경보를 발령할 필요가 없습니다.", False),
    ("알림 불필요", False),
    ("경보가 필요하지 않습니다.", False),
    ("경보를 발령하지 않습니다.", False),
    ("경보가 필요합니다.", True),
    ("작업자 2가 안전모를 쓰지 않았으므로 경보를 울려야 합니다.", True),
    # the VLM team's own Korean answers (울리다 = sound, 발동 = invoke) and their negations
    ("따라서 경보를 울립니다", True),
    ("작업자 3은 반사띠가 없는 주황색 티셔츠를 입고 있습니다. 따라서 경보를 울립니다.", True),
    ("경보를 발동합니다.", True),
    ("경보가 발동됩니다.", True),
    ("경보를 울리지 않습니다.", False),
    ("모든 작업자가 안전모와 안전 조끼를 착용했으므로 경보를 울리지 않습니다.", False),
    ("경보가 필요하지 않습니다", False),
    ("경보를 발동하지 않습니다.", False),
    ("경보를 울릴 필요가 없습니다.", False),
    ("경보를 발동할 필요가 없습니다.", False),
    ("경보는 발동되지 않습니다.", False),
    ("경보 발동 여부: 발동", True),
    ("경보: 미발동", False),
    ("따라서 경보를 울립니다. 경보를 울리지 않습니다.", None),  # contradictory free phrasing
    ("경보 장치가 작업장 입구에 있습니다.", None),  # names the alarm, decides nothing
    # nothing, format echoes, contradictions, lookalikes -> None
    ("", None),
    ("   \n ", None),
    ("Worker 2 is missing a vest.", None),
    ("Yes", None),  # a bare answer to a question we cannot see
    ("Alert: True/False", None),
    ("Alert: <True|False>", None),
    ("Alert: 1/0", None),
    ("알람: 예/아니요", None),
    ("Alert: No helmet on worker 2", None),  # "No" starts a description, not a decision
    ("경보: 예를 들어 작업자 2는", None),  # 예를 들어 = "for example"
    ("No alert is needed. An alert should be raised.", None),
    ("경보 필요 없음. 경보를 발령해야 합니다.", None),
]


@pytest.mark.parametrize("text,expected", PHRASINGS, ids=[repr(t)[:40] for t, _ in PHRASINGS])
def test_parse_alert(text, expected):
    assert parse_alert(text) is expected


def test_phrasing_table_is_broad():
    assert len(PHRASINGS) >= 40
    assert sum(any("\uac00" <= c <= "\ud7a3" for c in t) for t, _ in PHRASINGS) >= 15  # Korean
    assert {e for _, e in PHRASINGS} == {True, False, None}


def test_parse_alert_rejects_non_text():
    with pytest.raises(TypeError):
        parse_alert(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ metrics

_CLASS = {True: "alert", False: "no_alert", None: "unparseable"}


def _sklearn(gold: list[bool], pred: list[bool | None]) -> dict[str, float]:
    """The expected figures from scikit-learn, unparseable as a third class."""
    y, p = [_CLASS[g] for g in gold], [_CLASS[v] for v in pred]
    precision, recall, f1, _ = precision_recall_fscore_support(y, p, labels=["alert"], average=None, zero_division=0)
    return {
        "n": len(y),
        "accuracy": accuracy_score(y, p),
        "precision": float(precision[0]),
        "recall": float(recall[0]),
        "f1": float(f1[0]),
        "false_positives": sum(g is False and v is True for g, v in zip(gold, pred)),
        "false_negatives": sum(g is True and v is False for g, v in zip(gold, pred)),
        "unparseable": sum(v is None for v in pred),
    }


def _random_cases(seed: int, n: int = 200) -> tuple[list[bool], list[bool | None]]:
    rng = random.Random(seed)
    gold = [rng.random() < 0.5 for _ in range(n)]
    pred = [None if rng.random() < 0.12 else (g if rng.random() < 0.75 else not g) for g in gold]
    return gold, pred


def _stats(gold, pred, as_tensor: bool) -> dict[str, float]:
    metric = AlertStats()
    for s in (slice(0, 31), slice(31, 140), slice(140, None)):  # uneven batches
        if as_tensor:
            metric.update(torch.tensor([-1 if v is None else int(v) for v in pred[s]]), torch.tensor(gold[s]))
        else:
            metric.update(pred[s], gold[s])
    out = metric.compute()
    assert list(out) == list(ALERT_KEYS)
    return {k: v.item() for k, v in out.items()}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("as_tensor", [False, True])
def test_alert_stats_match_sklearn(seed, as_tensor):
    gold, pred = _random_cases(seed)
    assert None in pred and True in pred and False in pred
    got, expected = _stats(gold, pred, as_tensor), _sklearn(gold, pred)
    for key in ALERT_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert got["n"] == 200 and got["unparseable"] == sum(v is None for v in pred)


@pytest.mark.parametrize("gold,pred", [
    ([True, True, False], [False, False, False]),  # nothing predicted positive: precision 0
    ([True, False, True], [None, None, None]),  # all unparseable: precision 0, recall 0
    ([False, False, False], [True, False, None]),  # no gold alert: recall 0, f1 0
    ([False, False], [False, False]),  # no alert anywhere: every ratio but accuracy is 0
    ([True, True], [True, None]),  # an unparseable gold alert is a missed alert
])
def test_zero_division_and_small_cases(gold, pred):
    got, expected = _stats(gold, pred, as_tensor=False), _sklearn(gold, pred)
    for key in ALERT_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert alert_summary(gold, pred) == pytest.approx(expected, abs=1e-12)


def test_pinned_small_example():
    # gold:  T    T     T  F     F    F
    # pred:  T    None  F  T     F    None
    got = alert_summary([True, True, True, False, False, False], [True, None, False, True, False, None])
    assert got == {"n": 6, "accuracy": 2 / 6, "precision": 0.5, "recall": 1 / 3, "f1": 0.4,
                   "false_positives": 1, "false_negatives": 1, "unparseable": 2}


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric AlertStats was called before")
def test_empty_metric_gives_zeros():
    out = AlertStats().compute()
    assert {k: v.item() for k, v in out.items()} == dict.fromkeys(ALERT_KEYS, 0)


@pytest.mark.parametrize("seed", range(3))
def test_alert_summary_equals_alert_stats(seed):
    gold, pred = _random_cases(100 + seed, n=137)
    plain = alert_summary(gold, pred)
    tensor = _stats(gold, pred, as_tensor=False)
    assert list(plain) == list(ALERT_KEYS)
    for key in ALERT_KEYS:
        assert plain[key] == pytest.approx(tensor[key], abs=1e-12), key
        assert isinstance(plain[key], int if key in ("n", "false_positives", "false_negatives", "unparseable")
                          else float)


def test_bad_inputs():
    metric = AlertStats()
    for pred, gold, match in (
        ([True], [True, False], "same length"),
        ([True, "yes"], [True, False], r"pred\[1\] must be True, False or None"),
        ([True], [None], r"gold\[0\] must be True or False"),
        (torch.tensor([2]), torch.tensor([1]), "values must be in"),
        (torch.tensor([1]), torch.tensor([-1]), "values must be in"),
        (torch.tensor([0.7]), torch.tensor([1]), "integer or bool tensor"),
    ):
        with pytest.raises(ValueError, match=match):
            metric.update(pred, gold)
    with pytest.raises(ValueError, match="same length"):
        alert_summary([True], [])
    with pytest.raises(ValueError, match=r"gold\[0\]"):
        alert_summary([1], [True])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, world: int, port: int, out_dir: str, gold: list, pred: list) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        shard = slice(0, 71) if rank == 0 else slice(71, None)  # uneven shards
        metric = AlertStats()
        metric.update(pred[shard], gold[shard])
        torch.save({k: v.item() for k, v in metric.compute().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_alert_stats_sync_across_two_processes(tmp_path):
    import torch.multiprocessing as mp

    gold, pred = _random_cases(7)
    # fork where available: the children inherit the imported torch instead of re-importing it.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_sync_worker, args=(2, _free_port(), str(tmp_path), gold, pred), nprocs=2, join=True,
                       start_method=method)
    expected = _sklearn(gold, pred)
    assert alert_summary(gold[:71], pred[:71]) != pytest.approx(expected)  # so sync is what is tested
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key in ALERT_KEYS:
            assert got[key] == pytest.approx(expected[key], abs=1e-12), (rank, key)
