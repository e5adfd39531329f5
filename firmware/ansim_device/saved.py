"""Frames that must survive a power cut until the broker has them: a bell pressed while the
WiFi is down must still reach the agent after the power comes back.

One line per frame (``kind hex``), rewritten whenever such a frame is queued or delivered:
rare events, so the flash is not worn. The new contents go to a second file that replaces
the first only once complete, so a write torn by power loss leaves the previous list.
"""

import binascii
import os


class SavedFrames:
    def __init__(self, path):
        self.path = path

    def load(self):
        """``[(kind, frame)]`` saved before the last power-off, oldest first."""
        try:
            with open(self.path) as f:
                lines = f.read().split("\n")
        except OSError:
            return []
        saved = []
        for line in lines:
            parts = line.split()
            if len(parts) == 2:
                try:
                    saved.append((parts[0], binascii.unhexlify(parts[1])))
                except ValueError:
                    pass  # not ours: skip it rather than lose the rest
        return saved

    def save(self, entries):
        """Replace the saved list with ``entries`` (``[(kind, frame)]``)."""
        if not entries:
            try:
                os.remove(self.path)
            except OSError:
                pass  # nothing saved
            return
        new = self.path + ".new"
        with open(new, "w") as f:
            for kind, frame in entries:
                f.write("%s %s\n" % (kind, binascii.hexlify(frame).decode()))
        os.rename(new, self.path)
