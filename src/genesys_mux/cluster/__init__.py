"""Several instances sharing the streams of one configuration, coordinated in Redis.

:mod:`~genesys_mux.cluster.leases` holds the members and the stream leases
(with their fencing tokens); :mod:`genesys_mux.core.placement` decides who
should carry what; :mod:`~genesys_mux.cluster.member` is one instance's loop
that takes, hands over and fails over streams on its Multiplexer.
"""

from genesys_mux.cluster.leases import Lease, LeaseTable, MemberInfo
from genesys_mux.cluster.member import ClusterMember, MemberStatus

__all__ = ["ClusterMember", "Lease", "LeaseTable", "MemberInfo", "MemberStatus"]
