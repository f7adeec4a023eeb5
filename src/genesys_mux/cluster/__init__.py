"""Several instances sharing the streams of one configuration, coordinated in Redis.

:mod:`~genesys_mux.cluster.leases` holds the members and the stream leases
(with their fencing tokens); :mod:`genesys_mux.core.placement` decides who
should carry what.
"""

from genesys_mux.cluster.leases import Lease, LeaseTable, MemberInfo

__all__ = ["Lease", "LeaseTable", "MemberInfo"]
