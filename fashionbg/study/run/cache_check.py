"""`python -m fashionbg.study.run.cache_check`, run after `dvc repro` (make repro) and after each
study cell's `dvc exp run`: DVC reports an output it could not copy into its cache (a full
disk, a quota) as "failed to transfer" errors, yet for a folder output still exits 0, and the
run looks finished while its outputs are nowhere but the workspace. Here that is one line and
exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from fashionbg.core.cli import stage_main
from fashionbg.core.errors import UserError


def outputs_not_in_cache(stages: list[str]) -> list[str]:
    """The outputs `dvc status` finds in the workspace but not in DVC's cache, of `stages` and
    the stages they depend on (what `dvc exp run <stage>` ran), or of every stage."""
    targets = [*stages, "--with-deps"] if stages else []
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *targets],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError("dvc status failed after the run: "
                        + (result.stderr.strip().splitlines() or ["no output"])[-1])
    status: Any = json.loads(result.stdout or "{}")
    return [path for changes in status.values() if isinstance(changes, list)
            for change in changes if isinstance(change, dict)
            for path, state in change.get("changed outs", {}).items()
            if state == "not in cache"]


@stage_main
def main() -> None:
    missing = outputs_not_in_cache(sys.argv[1:])
    if missing:
        raise UserError(f"{len(missing)} output(s) did not reach DVC's cache ("
                        + ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
                        + "): DVC's errors above say why (\"No space left on device\": free "
                        "space where .dvc/cache lies) and re-run")


if __name__ == "__main__":
    main()
