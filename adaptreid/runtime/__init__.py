"""Runtime: what depends on the machine rather than on the method. The device and autocast
(:mod:`.device`), CPU/GPU precision probing (:mod:`.precision`), torch.distributed helpers
(:mod:`.distributed`), the share of the cores among the adaptreid processes of a machine
(:mod:`.threads`) and the crash points of the kill tests (:mod:`.faults`).

Below data, models and the engine; imports nothing of the package but ``config`` and
``errors``."""
