"""nflog-zmq-pcap-pipe: NFLOG -> ZeroMQ -> pcap stream.

The library holds everything the daemons share; the daemons themselves
(``sender``, ``receiver``, ...) are thin poll loops around these classes.
"""

__version__ = "2.0.0.dev0"
