"""The scenario's fault kinds, in one registry: the steps where each can strike and the layer that delivers it.

A fault strikes where it says (`at`) or nowhere: the scenario refuses a step where its kind cannot strike
(`scenario.py` reads this registry), and each layer takes only the kinds the registry gives it at that step.

- `protocol`: the WinRM listener answers the step's command itself (`server.py`): the connection is cut,
  the reply comes late, the shell is lost, the credentials are refused, the host restarts.
- `command`: the cmdlet answers otherwise than it would have (`commands.py`): another job holds the host,
  the VM is gone.
- `host`: the host's own work goes otherwise (`host.py`, as a job is planned): VSS fails, the target fills
  up, the merge never happens; or the host restarts halfway through a phase of the job (`timeline`).

A restart during the shadow copy, the merge or the copy is a moment of the host's own work, not of a command:
at a fast clock a merge lasts a fraction of a real second, and a fault that waited for a command to arrive
then would strike late or never. So `host_reboot` at those steps is planned on the job's timeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hyperv_backup.facts import STEPS

PROTOCOL, COMMAND, HOST = "protocol", "command", "host"


@dataclass(frozen=True)
class FaultKind:
    name: str
    layer: str  # PROTOCOL | COMMAND | HOST
    steps: tuple[str, ...]  # where it can strike
    default_step: str  # where it strikes when the scenario does not say
    effect: str  # what the host does (docs/scenario.md's table says the same; a test compares)
    timeline: tuple[str, ...] = ()  # steps where it strikes halfway through the job's phase (HOST), not at a command

    def layer_at(self, step: str) -> str:
        return HOST if step in self.timeline else self.layer


KINDS: dict[str, FaultKind] = {kind.name: kind for kind in (
    FaultKind("connection_drop", PROTOCOL, STEPS, "probe", "cuts the TCP connection mid-request"),
    FaultKind("slow", PROTOCOL, STEPS, "probe", "answers after the client's operation timeout"),
    FaultKind("soap_fault", PROTOCOL, STEPS, "probe", "HTTP 500 with a WS-Man fault; the shell is lost"),
    FaultKind("auth_fail", PROTOCOL, STEPS, "probe", "refuses the credentials (401)"),
    FaultKind("host_reboot", PROTOCOL, STEPS, "copy", "restarts: the running job is cut, the VMs restart, the host does "
                                                     "not answer for a while, its boot time moves; at snapshot, merge and copy "
                                                     "halfway through that phase of the VM's job, at probe and verify as the "
                                                     "step's command arrives", timeline=("snapshot", "merge", "copy")),
    FaultKind("vss_transient", HOST, ("snapshot", "copy"), "snapshot", "the job fails with 0x800423F3"),
    FaultKind("target_full", HOST, ("copy",), "copy", "the job fails with 0x80070070 and Backup event 50"),
    FaultKind("job_running", COMMAND, ("snapshot",), "snapshot", "another WSB job runs on the host"),
    FaultKind("merge_stuck", HOST, ("merge",), "merge", "the Recovery checkpoint is never removed"),
    FaultKind("vm_removed", COMMAND, ("probe", "snapshot"), "probe", "the VM disappears after the probe (at probe: as the probe "
                                                                   "answers; at snapshot: as its job would start)"),
)}


def striking(layer: str, step: str) -> tuple[str, ...]:
    """The kinds this layer delivers at this step."""
    return tuple(name for name, kind in KINDS.items() if step in kind.steps and kind.layer_at(step) == layer)


@dataclass
class Armed:
    """A scenario's fault on a running host: `times` counts down as it strikes."""

    kind: str
    at: str
    times: int


def armed(declared: Iterable) -> list[Armed]:
    """A host's or VM's faults as the scenario declares them (`scenario.Fault`), ready to strike."""
    return [Armed(fault.kind, fault.at, fault.times) for fault in declared]


def take(armed: list[Armed], step: str, kinds: tuple[str, ...]) -> Armed | None:
    """Consume one strike of the first armed fault of these kinds at this step, if any is left."""
    for fault in armed:
        if fault.at == step and fault.kind in kinds and fault.times > 0:
            fault.times -= 1
            return fault
    return None
