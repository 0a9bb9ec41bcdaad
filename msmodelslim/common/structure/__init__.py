"""Framework-free structure description of transformer families (:mod:`.families`) and the coupled channel
groups derived from it (:mod:`.layout`)."""
