import re

import pytest

from pretrain_bench import objectives
from pretrain_bench.errors import UserError
from tests.conftest import cli


def test_builtin_names_and_summaries():
    names = objectives.available()
    assert "mlm" in names
    for name, cls in names.items():
        assert cls.summary, f"{name} needs a one-line summary"
        cls.Config(name=name)  # every registered objective builds from its defaults


def test_dotted_path_plugin():
    cls = objectives.get("tests.plugins.shuffle_objective:Shuffled")
    assert cls.__name__ == "Shuffled" and issubclass(cls, objectives.Objective)


@pytest.mark.parametrize("name,message", [
    ("mlmm", "unknown objective 'mlmm' (did you mean 'mlm'?)"),
    ("tests.plugins.shuffle_objective:Missing", "cannot import it"),
    ("no_such_package.mod:Thing", "cannot import it"),
    ("tests.plugins.shuffle_objective:NotAnObjective", "is not a subclass"),
])
def test_bad_names(name, message):
    with pytest.raises(UserError, match=re.escape(message)):
        objectives.get(name)


def test_register_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        objectives.register("mlm")(type("Other", (objectives.Objective,), {}))


def test_cli_lists_objectives():
    out = cli("objectives").stdout
    for name in objectives.available():
        assert out.count(f"\n{name} ") + out.startswith(f"{name} ") == 1
