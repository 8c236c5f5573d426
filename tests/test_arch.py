import pytest

from supernets import Architecture, ArchitectureError, Block, Space
from supernets.arch import space_from_dict


def test_json_round_trip(rng):
    space = Space(resolutions=(32, 40), keys=(1, 2, 3, 4, 5, 6, 7), exits=(1, 2, 3, 4, 5))
    for arch in space.sample(rng, 20):
        assert Architecture.from_json(arch.to_json()) == arch
        assert hash(Architecture.from_dict(arch.to_dict())) == hash(arch)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel=4, expand=3), r"kernel = 4 is not allowed; expected one of 3, 5, 7"),
    (dict(kernel=3, expand=0), r"expand = 0 is not allowed"),
    (dict(kernel=3, expand=3, key=0), r"key = 0 is not allowed; expected an integer in 1..7"),
    (dict(kernel=3.0, expand=3), r"kernel = 3.0"),
])
def test_block_validation_names_the_field(kwargs, message):
    with pytest.raises(ArchitectureError, match=message):
        Block(**kwargs)


def test_architecture_validation_names_the_field():
    block = Block(3, 3)
    with pytest.raises(ArchitectureError, match=r"resolution = 4 "):
        Architecture(4, 1.0, [[block] * 2])
    with pytest.raises(ArchitectureError, match=r"number of stages \(exit\) = 6"):
        Architecture(32, 1.0, [[block] * 2] * 6)
    with pytest.raises(ArchitectureError, match=r"depth of stage 2 = 5"):
        Architecture(32, 1.0, [[block] * 2, [block] * 5])
    with pytest.raises(ArchitectureError, match=r"width = -1"):
        Architecture(32, -1, [[block] * 2])


def test_malformed_json_is_a_clear_error():
    with pytest.raises(ArchitectureError, match="malformed"):
        Architecture.from_json("{not json")
    with pytest.raises(ArchitectureError, match="keys resolution, width, stages"):
        Architecture.from_json('{"resolution": 32}')
    with pytest.raises(ArchitectureError, match="kernel, expand, key"):
        Architecture.from_json('{"resolution": 32, "width": 1.0, "stages": [[{"k": 3}]]}')


def test_space_check_and_config():
    space = space_from_dict({"resolutions": [32], "widths": [1.0]})
    with pytest.raises(ArchitectureError, match=r"depth of stage 1 = 1 .*\(2, 3, 4\)"):
        space.check(Architecture(32, 1.0, [[Block(3, 3)]] * 5))
    with pytest.raises(ArchitectureError, match=r"unknown space keys \['kernel'\]"):
        space_from_dict({"kernel": [3]})
    with pytest.raises(ArchitectureError, match=r"Space.depths"):
        Space(depths=())
