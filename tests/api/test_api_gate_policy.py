"""A tenant's absolute harmful-score ceiling, set and cleared through the admin routes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.helpers import Keys, auth


def test_tenant_ceiling_is_set_validated_and_cleared(client: TestClient, keys: Keys) -> None:
    def patch(policy: dict[str, object]) -> object:
        return client.patch(
            "/admin/tenants/alpha", headers=auth(keys.admin), json={"policy": policy}
        )

    response = patch({"safety_gate_max_harmful": 0.25, "safety_gate_margin": 0.05})
    assert response.status_code == 200, response.text
    assert response.json()["policy"] == {
        "safety_gate_max_harmful": 0.25,
        "safety_gate_margin": 0.05,
    }
    for bad in (-0.1, 1.5, "0.1", True):
        response = patch({"safety_gate_max_harmful": bad})
        assert response.status_code == 400, bad
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (
            "policy.safety_gate_max_harmful",
            "invalid_policy",
        )
    response = patch({"safety_gate_max_harmful": None})
    assert response.json()["policy"] == {"safety_gate_margin": 0.05}
