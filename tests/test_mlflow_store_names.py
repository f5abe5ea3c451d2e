"""The store-independent name and text rules that keep PostgreSQL and MySQL stores exact (no database needed)."""

from __future__ import annotations

from neptune_migration.naming import resolve_collisions
from neptune_migration.targets.mlflow.mapping import fold_key, param_value, sanitize_key, text_value


def test_keys_a_mysql_collation_holds_as_one_collide() -> None:
    for a, b in [("Loss", "loss"), ("ünï", "uni"), ("x", "x "), ("ß", "s"), ("Straße", "strasse")]:
        assert fold_key(a) == fold_key(b), (a, b)
    assert fold_key("loss") != fold_key("lr")
    names = resolve_collisions(["m/Loss", "m/loss", "m/lr"], sanitize_key, fold_key)
    assert names["m/Loss"] == "m/Loss" and names["m/lr"] == "m/lr"
    assert names["m/loss"].startswith("m/loss_") and fold_key(names["m/loss"]) != fold_key("m/Loss")


def test_without_a_fold_nothing_changes() -> None:
    assert resolve_collisions(["m/Loss", "m/loss", "a#b", "a_b"], sanitize_key) == {
        "m/Loss": "m/Loss", "m/loss": "m/loss", "a_b": "a_b",
        "a#b": resolve_collisions(["a#b", "a_b"], sanitize_key)["a#b"]}
    assert resolve_collisions(["a#b", "a_b"], sanitize_key)["a#b"].startswith("a_b_")


def test_nul_is_never_stored_and_the_exact_text_goes_to_an_artifact() -> None:
    assert param_value("p", "plain") == ("plain", None, [])
    stored, where, kinds = param_value("p", "a\x00b")
    # The exact text sits where the attribute lives: `<key>.txt`.
    assert stored == "a\u2400b" and where == "p.txt"
    assert param_value("params/nul", "a\x00b")[1] == "params/nul.txt"
    assert kinds == ["param_nul_replaced_full_value_in_artifact"]
    stored, where, kinds = param_value("p", "\x00" + "x" * 7000)
    assert len(stored) <= 6000 and "\x00" not in stored and where is not None
    assert kinds == ["param_nul_replaced_full_value_in_artifact", "param_truncated_full_value_in_artifact"]
    assert text_value("a\x00b") == "a\u2400b" and len(text_value("y" * 9000)) == 8000
