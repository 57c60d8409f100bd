"""PATCH /v1/vms/{name}'s body: only the fields that can change, sizes as for the spec, absent fields unset."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from corral.api.models import SpecUpdate


def test_sizes_and_unset_fields() -> None:
    u = SpecUpdate.model_validate({"memory": "1G", "restart": "always"})
    assert u.model_dump(mode="json", exclude_unset=True) == {"memory": 1024, "restart": "always"}


@pytest.mark.parametrize("body", [{"image": "tiny"}, {"memory": 1}, {"vcpus": 0}, {"restart": "sometimes"}])
def test_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SpecUpdate.model_validate(body)


def test_balloon_can_change() -> None:
    assert SpecUpdate.model_validate({"balloon": True}).model_dump(exclude_unset=True) == {"balloon": True}
