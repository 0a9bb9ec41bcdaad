"""The checkpoint directory of one ``slim_model`` run: ``settings.json`` (the run's settings: a run resumes only
from checkpoints written with the same ones), ``search.json`` and ``start.pt`` once the search is done, ``final.pt``
during the final distillation. Every file is written atomically (temporary file, then rename), by rank 0 only when
several processes run."""
import json
import os

import torch

from msmodelslim.pytorch.slim import distributed

SETTINGS_FILE, SEARCH_FILE, START_FILE, FINAL_FILE = "settings.json", "search.json", "start.pt", "final.pt"


class Checkpoints:
    """The checkpoint directory of one run (None: no checkpoints). ``settings.json`` records the run's settings;
    a run resumes only from checkpoints written with the same settings."""

    def __init__(self, folder, settings, resume):
        self.folder, self.settings = folder, settings
        recorded = self._recorded()
        if folder is None:
            return
        if resume and recorded is None:
            raise ValueError(f"resume: checkpoint_dir '{folder}' holds no checkpoint of a slim run to resume.")
        if resume and recorded != settings:
            changed = sorted(k for k in set(settings) | set(recorded) if settings.get(k) != recorded.get(k))
            raise ValueError(f"resume: the checkpoints in '{folder}' were written with other settings "
                             f"({', '.join(changed)} differ); resume with the same settings or start in an empty "
                             f"directory.")
        if not resume and recorded is not None:
            raise ValueError(f"checkpoint_dir '{folder}' holds the checkpoints of an earlier slim run; pass "
                             f"resume=True (--resume) to continue it, or give another directory.")

    def _recorded(self):
        path = self.path(SETTINGS_FILE)
        if path is None or not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)

    def path(self, name):
        return os.path.join(self.folder, name) if self.folder else None

    def has(self, name):
        return self.folder is not None and os.path.isfile(self.path(name))

    def write(self, name, content):
        """Write ``content`` (JSON for ``.json``, else torch.save) atomically; creates the directory and the
        settings file first. With several processes, rank 0 writes and every process waits for it."""
        if self.folder is None:
            return
        if distributed.rank() == 0:
            os.makedirs(self.folder, exist_ok=True)
            if not self.has(SETTINGS_FILE):
                self._write_file(SETTINGS_FILE, self.settings)
            self._write_file(name, content)
        distributed.barrier()

    def _write_file(self, name, content):
        temporary = self.path(name) + ".tmp"
        if name.endswith(".json"):
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(content, handle, indent=1)
        else:
            torch.save(content, temporary)
        os.replace(temporary, self.path(name))
