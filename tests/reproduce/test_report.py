"""The results pages (flowood.reproduce.report): the paper vs flowood table (each paper number with its source,
ours as mean ± sd, the scale we ran at), the explicit line when no paper number is recorded, and results.json."""

from __future__ import annotations

import json

from flowood.reproduce.experiments import Experiment, PaperNumber
from flowood.reproduce.report import paper_lines, paper_table, write_results


def state(seed: int, test_bpd: float, auroc: float) -> dict:
    return {"status": "done", "seed": seed, "stages": {"evaluate": {
        "test_bpd": test_bpd, "ood": {"mnist": {"auroc": auroc, "bpd": 2.0 + seed, "scores": {}}}}}}


def experiment(numbers: list[PaperNumber], note: str = "", name: str = "glow") -> Experiment:
    return Experiment(name, "Glow on FashionMNIST", "Section 4", ["all"], train={"dataset": "fashionmnist"},
                      evaluate={"ood": ["mnist"]}, inspect=None, embed=None, checks=[], paper_numbers=numbers,
                      paper_numbers_note=note, scale="cpu")


NUMBERS = [PaperNumber("test_bpd", 3.1408, "the authors' notebook"),
           PaperNumber("ood_bpd", 2.0807, "the authors' notebook", ood="mnist", note="epoch 80"),
           PaperNumber("auroc", 0.1, "Table 9", ood="notmnist"),
           PaperNumber(None, 3.49, label="test bits/dim (literature)")]


def test_the_paper_vs_flowood_table_sets_each_number_beside_ours():
    runs = [state(0, 3.0, 0.1), state(1, 4.0, 0.3)]
    table = paper_table(experiment(NUMBERS), runs)
    head, rows = table.head, table.rows
    assert head == ["number", "the paper's", "source", "flowood", "flowood's scale"]
    assert rows[0] == ["test bits/dim", "3.1408", "the authors' notebook", "3.500 ± 0.707", "cpu, 2 seeds"]
    assert rows[1] == ["bits/dim (mnist)", "2.0807", "the authors' notebook (epoch 80)", "2.500 ± 0.707",
                       "cpu, 2 seeds"]
    assert rows[2][3] == "– (not evaluated)"  # no notmnist here
    assert rows[3][:4] == ["test bits/dim (literature)", "3.49", "source not given",
                           "– (not a metric flowood reports)"]
    (one,) = paper_table(experiment(NUMBERS[:1]), [state(0, 3.0, 0.1)]).rows
    assert one[3:] == ["3.000", "cpu"]


def test_no_paper_number_is_said_explicitly():
    assert paper_table(experiment([]), []) is None
    assert paper_lines(experiment([], "the paper's Table 2 could not be read offline")) == [
        "No number recorded: the paper's Table 2 could not be read offline"]
    assert paper_lines(experiment([]))[0].startswith("No number recorded: ")
    assert paper_lines(experiment(NUMBERS[:1], "only the notebook")) == ["On the paper's numbers: only the notebook"]
    assert paper_lines(experiment(NUMBERS[:1])) == []


def test_results_pages_show_both_cases(tmp_path):
    with_numbers, without = experiment(NUMBERS[:2], name="glow"), experiment([], "could not be read", name="nvp")
    states = {"glow": [state(0, 3.0, 0.1), state(1, 4.0, 0.3)], "nvp": [state(0, 3.0, 0.2), state(1, 3.0, 0.2)]}
    run = {"suite": "all", "scale": "cpu", "seeds": 2, "command": "flowood reproduce", "machine": "m"}
    md_path, html_path, json_path = write_results(tmp_path, [with_numbers, without], states, run, 1.0)
    md, html = md_path.read_text(), html_path.read_text()
    assert md.count("#### The paper vs flowood") == 2
    assert "| test bits/dim | 3.1408 | the authors' notebook | 3.500 ± 0.707 | cpu, 2 seeds |" in md
    assert "No number recorded: could not be read" in md
    assert "<h4>The paper vs flowood</h4>" in html and "<td>3.500 ± 0.707</td>" in html
    assert "No number recorded: could not be read" in html
    data = json.loads(json_path.read_text())
    (first, _) = data["experiments"]["glow"]["paper_numbers"]
    assert first["value"] == 3.1408 and first["source"] == "the authors' notebook"
    assert first["flowood"]["values"] == {"0": 3.0, "1": 4.0} and first["flowood"]["mean"] == 3.5
    assert data["experiments"]["nvp"]["paper_numbers"] == []
    assert data["experiments"]["nvp"]["paper_numbers_note"] == "could not be read"
    assert data["experiments"]["nvp"]["metrics"]["test_bpd"]["sd"] == 0.0
    # one seed: the single-seed page, plain values and verdicts
    md_path, _, _ = write_results(tmp_path, [with_numbers], {"glow": state(0, 3.0, 0.1)},
                                  dict(run, seeds=1), 1.0)
    single = md_path.read_text()
    assert "| test bits/dim | 3.1408 | the authors' notebook | 3.000 | cpu |" in single and "±" not in single
