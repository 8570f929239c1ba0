"""Against MEXA's own code (github cisnlp/MEXA: embed_extractor.py, then compute_mexa.py), same model and data.

MEXA is not part of this repository: clone it anywhere outside and pass --mexa-dir (or MEXA_DIR). Its files are
run unmodified; at run time two things are adapted so that it runs at all here: its device default ('cuda') is
set to 'cpu', and the `use_auth_token` argument that transformers 5 rejects is dropped. Goal: >= 3x faster end
to end on CPU (>= 10x on a GPU), with MEXA's `hidden` (embd_weighted) scores reproduced exactly, layer by layer."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import GEMMA, TEN_LANGS, report, save, udhr
from neuronxa_ray.model.gguf import materialize_gguf
from neuronxa_ray.model.resolve import resolve_source
from neuronxa_ray.model.spec import ModelSpec
from neuronxa_ray.query import connect


def run_mexa(mexa_dir: Path, model_dir: Path, data: Path, work: Path, pivot: str, n: int) -> dict:
    sys.path.insert(0, str(mexa_dir))
    try:
        ee = importlib.import_module("embed_extractor")
        ee.get_embedding_layers.__defaults__ = ("cpu",)
        for name in ("AutoModelForCausalLM", "AutoTokenizer"):
            cls = getattr(ee, name)
            loader = cls.from_pretrained

            class _NoAuthToken:
                @staticmethod
                def from_pretrained(path, _load=loader, **kw):
                    kw.pop("use_auth_token", None)
                    return _load(path, **kw)

            setattr(ee, name, _NoAuthToken)
        argv = sys.argv
        t0 = time.perf_counter()
        sys.argv = [
            "embed_extractor.py",
            "--model_name",
            str(model_dir),
            "--data_path",
            str(data),
            "--num_sents",
            str(n),
            "--save_path",
            str(work / "emb"),
            "--cache_dir",
            str(work / "cache"),
        ]
        ee.main()
        t1 = time.perf_counter()
        sys.argv = [
            "compute_mexa.py",
            "--pivot",
            pivot,
            "--embedding_path",
            str(work / "emb"),
            "--save_path",
            str(work / "out"),
            "--num_sents",
            str(n),
            "--embedding_type",
            "embd_weighted",
        ]
        runpy.run_path(str(mexa_dir / "compute_mexa.py"), run_name="__main__")
        t2 = time.perf_counter()
    finally:
        sys.argv = argv
        sys.path.remove(str(mexa_dir))
    scores = {p.stem: {int(k): v for k, v in json.loads(p.read_text()).items()} for p in (work / "out").glob("*.json")}
    return {"embed_s": t1 - t0, "compute_s": t2 - t1, "total_s": t2 - t0, "scores": scores}


def main(argv=None, ours: dict | None = None, lake: Path | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mexa-dir", default=os.environ.get("MEXA_DIR"))
    ap.add_argument("--languages", nargs="+", default=TEN_LANGS)
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args(argv)
    if not args.mexa_dir or not (Path(args.mexa_dir) / "embed_extractor.py").is_file():
        print("MEXA comparison skipped: pass --mexa-dir DIR (a clone of github.com/cisnlp/MEXA outside this repo)")
        return []
    work = Path(tempfile.mkdtemp(prefix="bench-mexa-"))
    data = work / "data"
    data.mkdir()
    for lang, texts in udhr(args.languages, args.n).items():
        (data / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    model_dir = materialize_gguf(*resolve_source(ModelSpec(model=GEMMA)))  # the same weights, as a HF directory
    if ours is None or lake is None:
        from benchmarks.bench_pipeline import run_pipeline

        lake = work / "lake"
        ours = run_pipeline(lake, args.languages, args.n)
    mexa = run_mexa(Path(args.mexa_dir), model_dir, data, work, args.languages[0], args.n)
    con = connect(lake)
    mismatches, compared = [], 0
    for lang, per_layer in mexa["scores"].items():
        if lang == args.languages[0]:
            continue
        rows = con.execute("SELECT layer, score FROM alignment WHERE method = 'hidden' AND lang = ?", [lang]).fetchall()
        got = dict(rows)
        for layer, score in per_layer.items():
            compared += 1
            if got.get(layer) != score:
                mismatches.append((lang, layer, score, got.get(layer)))
    print(
        f"MEXA's code: embed {mexa['embed_s']:.1f}s + compute {mexa['compute_s']:.1f}s = {mexa['total_s']:.1f}s; "
        f"neuronxa-ray end to end (start-up included, all four methods) {ours['total_s']:.1f}s"
    )
    print(f"  hidden scores compared layer by layer: {compared}, identical: {compared - len(mismatches)}")
    for m in mismatches[:10]:
        print(f"  mismatch {m}")
    results = [
        report("MEXA end to end / ours end to end (CPU)", mexa["total_s"] / ours["total_s"], 3.0),
        report("hidden scores identical to MEXA's (share)", (compared - len(mismatches)) / max(compared, 1), 1.0),
    ]
    save(
        "mexa",
        {
            "mexa": {k: v for k, v in mexa.items() if k != "scores"},
            "ours_total_s": ours["total_s"],
            "compared": compared,
            "mismatches": mismatches,
            "results": results,
        },
    )
    return results


if __name__ == "__main__":
    main()
