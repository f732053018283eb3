"""Unknown model keywords are refused by ``create_model`` itself, naming the model and what it takes."""

from __future__ import annotations

import pytest

import mambaseg
from mambaseg.models import list_models
from mambaseg.models._registry import check_model_kwargs


@pytest.mark.parametrize("name", list_models())
def test_unknown_model_kwarg_names_the_model_and_its_keywords(name):
    # vmunet & co. pass their **kwargs down to SS2D, whose TypeError ("SS2D got unexpected options") was all one saw
    with pytest.raises(TypeError) as e:
        mambaseg.create_model(name, foo=1)
    msg = str(e.value)
    assert f"model {name!r} takes no keyword 'foo'" in msg, msg
    assert "model.kwargs" in msg and "--set" in msg and "SS2D" not in msg, msg
    assert "d_state" in msg.split(" takes: ")[1]  # every model's own options name it


def test_the_options_named_are_the_model_class_options():
    with pytest.raises(TypeError) as e:
        mambaseg.create_model("vmunet", foo=1, depths_typo=2)
    msg = str(e.value)
    assert "keywords 'foo', 'depths_typo'" in msg
    takes = set(msg.split(" takes: ")[1].split(" (and")[0].split(", "))
    assert {"depths", "dims", "drop_path_rate", "patch_size", "d_state"} <= takes
    assert not takes & {"num_classes", "in_chans"}
    assert "options of its blocks: help(mambaseg.models.VMUNet)" in msg  # VMUNet passes the rest to SS2D
    # an option only a deeper block takes (VMB-UNet's SSCBlock) is accepted and used
    m = mambaseg.create_model("vmbunet", dims=8, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=2,
                              cbam_reduction=4, ssm_ratio=1.0)
    assert m.mambaseg_spec["kwargs"]["cbam_reduction"] == 4
    with pytest.raises(TypeError, match="model 'slicemamba_tiny' takes no keyword 'bar'"):
        check_model_kwargs("slicemamba_tiny", {"bar": 1})
    check_model_kwargs("slicemamba_tiny", {"d_state": 4})


def test_type_errors_from_inside_a_model_are_not_masked():
    with pytest.raises(TypeError, match="S3Block sets the scan itself"):
        mambaseg.create_model("slicemamba_tiny", scan=None)
    with pytest.raises(TypeError) as e:
        mambaseg.create_model("vmunet_tiny", dims=[8, "x", 16, 32])
    assert "takes no keyword" not in str(e.value)
