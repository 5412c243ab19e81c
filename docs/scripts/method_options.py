"""Write the output of `segsynth methods` and `segsynth methods NAME` into docs/_snippets/methods/ (the method
pages include them verbatim). Run again after a method's options change:

    .venv/bin/python docs/scripts/method_options.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "_snippets" / "methods"
SHOWN = ["none", "augment", "augment_rotate", "genseg", "separate", "genseg_aug", "separate_aug", "genseg_frozen",
         "spade", "brainspade", "learned", "learned_randaug", "randaug", "sas", "sas_aug", "transfer",
         "domain_rand", "mean_teacher", "fixmatch", "genseg+fixmatch", "nnunet", "spade_target", "fixmatch_target",
         "spade_target+fixmatch", "domain_rand_aug"]


def methods_output(*args: str) -> str:
    exe = Path(sys.executable).with_name("segsynth")
    return subprocess.run([str(exe), "methods", *args], check=True, capture_output=True, text=True).stdout


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "_list.txt").write_text(methods_output())
    for name in SHOWN:
        (OUT / f"{name}.txt").write_text(methods_output(name))
    print(f"wrote {len(SHOWN) + 1} files to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
