"""The operator image, built from Dockerfile.operator, runs the operator.

Built with hack/images/build.sh from the locally made bases (tests/support/images.py),
run as the chart runs it (user 1000, read-only root filesystem, no capabilities) against
the test ground's API server: it answers `--version`, wins its Lease, and turns a
TuningJob into the Job of the operator's builders.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

from tests.ground.cluster import Cluster, wait_for
from tests.integration.operator_support import create, install_crds, jobs, tuningjob, wait_phase
from tests.support.images import OperatorContainer, run_in_image


def test_operator_image_answers_version_as_user_1000(docker: str, operator_image: str) -> None:
    result = run_in_image(docker, operator_image, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kubetune, version {importlib.metadata.version('kubetune')}"
    who = run_in_image(docker, operator_image, "-c", "id -u; id -g", entrypoint="sh")
    assert who.stdout.split() == ["1000", "1000"], who
    # No torch (or the trainer's other heavy parts) in the operator's image.
    probe = "import importlib.util as u; print([m for m in ('torch', 'transformers') if u.find_spec(m)])"
    found = run_in_image(docker, operator_image, "-c", probe, entrypoint="python")
    assert found.returncode == 0 and found.stdout.strip() == "[]", found


def test_operator_image_leads_and_reconciles_a_tuningjob_on_the_ground(
    docker: str,
    operator_image: str,
    cluster: Cluster,
    namespace_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    install_crds(cluster)
    ns = namespace_factory("opimage")
    operator = OperatorContainer(
        cluster,
        tmp_path,
        [ns],
        docker=docker,
        image=operator_image,
        lease_namespace=ns,
        trainer_image="kubetune-trainer:dev",
    )
    try:
        operator.start()  # waits for /healthz to say "leader": it holds the Lease
        lease = cluster.coordination.read_namespaced_lease("kubetune-operator", ns)
        assert lease.spec.holder_identity == operator.name, lease.spec
        create(cluster, ns, tuningjob("from-image"))
        (job,) = wait_for(
            lambda: jobs(cluster, ns, "from-image") or None,
            timeout=60,
            what="the Job the operator in its image creates",
        )
        wait_phase(cluster, ns, "from-image", "Pending")
    except AssertionError as e:
        raise AssertionError(f"{e}\noperator (container) log:\n{operator.log()}") from None
    finally:
        operator.stop()
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "kubetune-trainer:dev"
    assert container["command"] == ["kubetune", "train", "--from-env"]
