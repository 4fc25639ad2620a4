"""`vipwire up --smoke` against a real cluster times create → status to the object."""

from __future__ import annotations

from pathlib import Path

from vipwire.allinone.clock import StatusClock
from vipwire.contracts import ServiceRef
from vipwire.kube import new_api_client
from vipwire.kubeemu import KubeEmulator


async def test_a_real_cluster_is_timed_to_the_status_on_the_service_object(
    tmp_path: Path,
) -> None:
    """A cluster reached only over its API (here an emulator behind a kubeconfig, as a
    real one is) converges when the Service object has an ingress IP, as seen by a
    watch of the API server, and not before."""
    async with KubeEmulator("east") as emu:
        api = await new_api_client(emu.write_kubeconfig(tmp_path / "kubeconfig"))
        clock = StatusClock({}, watched={"east": api})
        try:
            await clock.start()
            ref = ServiceRef("east", "default", "web")
            clock.mark_created(ref)
            await emu.create(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "web"},
                    "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
                }
            )
            svc = emu.get("services", "default", "web")
            svc["metadata"]["labels"] = {"touched": "yes"}  # a change without a status
            svc = await emu.replace(svc)
            marker = await emu.create(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "marker"},
                    "spec": {"ports": [{"port": 80}]},
                    "status": {},
                }
            )
            marker["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}
            await emu.replace(marker, subresource="status")
            # The marker's status came through the same watch after web's changes:
            # web, without an ingress IP, has not converged.
            await clock.wait_for(ServiceRef("east", "default", "marker"), 10.0)
            assert ref not in clock.converged
            svc["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}
            await emu.replace(svc, subresource="status")
            await clock.wait_for(ref, 10.0)
            latency = clock.latency_s(ref)
            assert latency is not None and latency > 0
        finally:
            await clock.stop()
            await api.close()
