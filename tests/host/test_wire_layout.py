"""The packet layout has one definition, firmware/netkernel/wire.py: a firmware module that
copies one of its `_NAME = const(V)` lines (const() inlines only within a module) copies it
with wire's value."""

import ast
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WIRE = ROOT / "firmware/netkernel/wire.py"


def _const_value(node: ast.AST) -> object:
    """V of `const(V)`, or the node itself when the value is not const(<literal>)."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "const" and len(node.args) == 1 and not node.keywords):
        try:
            return ast.literal_eval(node.args[0])
        except ValueError:
            pass
    return node


def _assignments(source: str, filename: str) -> list[tuple[str, object, int]]:
    """(name, value, line) of every `_NAME = ...` in the source, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for t in targets:
            if isinstance(t, ast.Name) and t.id.startswith("_"):
                found.append((t.id, _const_value(value), node.lineno))
    return found


def _wire_names() -> dict[str, int]:
    return {name: value for name, value, _ in _assignments(WIRE.read_text(), str(WIRE))
            if isinstance(value, int)}


def _mismatches(source: str, filename: str, wire: dict[str, int]) -> list[str]:
    """Copies of wire names that are not `_NAME = const(<wire's value>)`."""
    bad = []
    for name, value, line in _assignments(source, filename):
        if name not in wire:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value != wire[name]:
            shown = ast.unparse(value) if isinstance(value, ast.AST) else repr(value)
            bad.append(f"{filename}:{line}: {name} = {shown}, wire.py has {wire[name]:#x}")
    return bad


def _firmware_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "firmware").rglob("*.py") if p != WIRE)


def test_wire_names_are_unique_literals():
    defs = _assignments(WIRE.read_text(), str(WIRE))
    counts = Counter(name for name, _, _ in defs)
    assert [n for n, c in counts.items() if c > 1] == []
    assert [n for n, v, _ in defs if not isinstance(v, int)] == []
    wire = _wire_names()
    assert len(wire) >= 70
    assert wire["_TCP_FLAGS"] == 13 and wire["_ETH_HLEN"] == 14


@pytest.mark.parametrize("path", _firmware_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_copies_of_wire_names_match_wire(path: Path):
    assert _mismatches(path.read_text(), str(path.relative_to(ROOT)), _wire_names()) == []


def test_the_check_sees_copies_and_catches_a_wrong_one():
    wire = _wire_names()
    # Known copies are found where the layers keep them.
    for module, name in [("firmware/netkernel/tcp.py", "_TCP_FLAGS"),
                         ("firmware/netkernel/iface.py", "_ETHERTYPE_ARP"),
                         ("firmware/netkernel_native.py", "_ETH_HLEN")]:
        found = {n: v for n, v, _ in _assignments((ROOT / module).read_text(), module)}
        assert found.get(name) == wire[name], (module, name)
    # A copy with another value, or one that is not a literal, is reported.
    wrong = ("from micropython import const\n_TCP_FLAGS = const(12)\n_X = const(1)\n"
             "_ETH_HLEN = const(_X + 13)\n_IP_HLEN = const(0x14)\n")
    bad = _mismatches(wrong, "wrong.py", wire)
    assert len(bad) == 2, bad
    assert bad[0].startswith("wrong.py:2: _TCP_FLAGS") and bad[1].startswith("wrong.py:4:")


def _const_of(module: str, name: str) -> object:
    path = ROOT / module
    values = [v for n, v, _ in _assignments(path.read_text(), module) if n == name]
    assert len(values) == 1, (module, name, values)
    return values[0]


# Other constants a module copies for the same reason, each with where it comes from.
_COPIES = [
    ("firmware/netkernel/rings.py", "_WRAP",
     ["firmware/netkernel/dispatcher/reader.py", "firmware/netkernel/dispatcher/steering.py"]),
    ("firmware/netkernel/dispatcher/steering.py", "_C_DROP_RED",
     ["firmware/netkernel/dispatcher/reader.py"]),
]


@pytest.mark.parametrize("origin,name,copies", _COPIES, ids=[c[1] for c in _COPIES])
def test_other_copied_constants_match_their_origin(origin: str, name: str, copies: list[str]):
    value = _const_of(origin, name)
    assert isinstance(value, int)
    assert {m: _const_of(m, name) for m in copies} == {m: value for m in copies}


def test_the_isms_send_data_offset_follows_the_message_format():
    import struct

    from twinstack.proto import i2o
    assert _const_of("firmware/netkernel/ism.py", "_SEND_DATA") == (
        i2o.PAYLOAD + struct.calcsize(i2o.SEND_FMT))
