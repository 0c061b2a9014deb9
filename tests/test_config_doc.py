"""The config reference is generated from the schema: every key is in it with its default, and every
key of the schema carries a comment (a new setting arrives documented) (CPU, milliseconds)."""
import dataclasses

from byol.config import Config, to_dict
from byol.config_doc import _comments, markdown, schema_keys


def leaf_keys(values: dict, prefix: str = "") -> list[str]:
    out = []
    for name, value in values.items():
        out += leaf_keys(value, f"{prefix}{name}.") if isinstance(value, dict) and name != "kwargs" else [prefix + name]
    return out


def test_every_schema_key_has_a_comment():
    undocumented = [k.key for k in schema_keys() if not k.comment]
    assert undocumented == [], f"add a comment beside these keys in byol/config.py: {undocumented}"


def test_the_reference_lists_every_key_with_its_default_and_comment():
    page = markdown()
    keys = schema_keys()
    assert [k.key for k in keys] == leaf_keys(to_dict(Config()))          # all of them, in schema order
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if line.startswith("| `")}
    assert set(rows) == {k.key for k in keys}
    assert "`0.996`" in rows["trainer.m"] and "base EMA rate" in rows["trainer.m"]
    assert "`(96, 96, 3)`" in rows["data_transforms.input_shape"]
    assert "`null`" in rows["network.small_stem"] and "bool \\| None" in rows["network.small_stem"]
    assert "one of: auto, fp32, bf16, fp16" not in rows["trainer.precision"]   # the comment already lists them


def test_a_continued_comment_is_read_whole_and_a_missing_one_is_empty():
    @dataclasses.dataclass
    class Section:
        first: int = 1        # starts here
                              # and goes on here
        second: int = 2
        third: str = "x"      # its own

    assert _comments(Section) == {"first": "starts here and goes on here", "third": "its own"}
