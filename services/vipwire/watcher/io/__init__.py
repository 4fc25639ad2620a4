"""The watcher's adapters: Kubernetes in and out, the bus in and out.

Kubernetes -> bus: :mod:`.reflector` (list and watch), :mod:`.work_queue`,
:mod:`.publishing` (snapshots). Bus -> Kubernetes: :mod:`.bus_reader` (what
ipam, the lbdriver and the node agents said), :mod:`.status_writes` (status and
finalizer), :mod:`.event_recorder` (Events). :mod:`.kube_writes` fences every
write on leadership; :mod:`.term` is what the parts of one term share.
"""
