#!/usr/bin/env bash
# Regenerate every figure of benchmarks/RESULTS.md from the current code, with fresh indexes (never --keep).
#
#   bash benchmarks/reproduce.sh [--quick] [--out DIR] [--only NAME[,NAME…]] [--list] [--publish]
#
#   --quick    reduced sizes: the whole run takes at most 20 minutes on 2 cores
#   --out DIR  where everything goes (default out/reproduce, or out/reproduce-quick): DIR/RESULTS.md is the
#              report, DIR/<step>/ each step's own files and log, DIR/figures/ the figures
#   --only     run these steps only (the report then holds only them)
#   --list     print the steps and their commands, run nothing
#   --publish  after a run without failures, copy DIR/RESULTS.md and DIR/figures/ into benchmarks/ (with
#              benchmarks/full-runs.md, this round's full-size hand runs, appended)
#
# Adding a benchmark is one `step` line below:
#   step NAME "Section title" "QUICK COMMAND" "FULL COMMAND" [gpu]
# Each command runs from the repository root (in bash, with .venv/bin first on PATH; `import indexer` applies the thread defaults)
# with {out} replaced by an empty folder of its own. Every bench*.md it writes under {out} becomes its section (in
# path order), every *.txt directly in {out} a code block and every bench*.png a figure; a non-zero exit marks the
# section FAILED and the run goes on (the script then exits 1). A fifth word NEED runs the step only where the
# function `needs_NEED` below succeeds; otherwise the section says "Not run:" and what that function printed
# (`gpu`: torch sees a CUDA GPU). A step that needs another service gets its own `needs_…` function.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -x "$ROOT/.venv/bin/python" ] && export PATH="$ROOT/.venv/bin:$PATH"

NAMES=() TITLES=() QUICKS=() FULLS=() NEEDS=()
step() { NAMES+=("$1"); TITLES+=("$2"); QUICKS+=("$3"); FULLS+=("$4"); NEEDS+=("${5:-}"); }

# Conditions a step may need: succeed, or print why not and fail.
needs_gpu() {
  python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
    || { echo "torch sees no CUDA GPU on this machine"; return 1; }
}

needs_orthanc() {
  python -c "import sys; from benchmarks.fixtures.orthanc import orthanc_binary, dicomweb_plugin; sys.exit(0 if orthanc_binary() and dicomweb_plugin() else 1)" 2>/dev/null \
    || { echo "Orthanc and its DICOMweb plugin are not installed (scripts/env.sh installs them)"; return 1; }
}

# ---- the steps, in report order ---------------------------------------------------------------------------
step tiling "Patch reading and tiling (issue #2)" \
  "python -m benchmarks.tiling --size 8000 --repeats 2 --out {out}" \
  "python -m benchmarks.tiling --out {out}"
step encode "Encoder-only vs end-to-end patch throughput (issue #3)" \
  "python -m benchmarks.encode --models tiny --workers 0 2 --repeats 2 --device cpu --workdir {out}/work --out {out}" \
  "python -m benchmarks.encode --models tiny openclip:ViT-B-16 --workers 0 1 2 --repeats 3 --device cpu --workdir {out}/work --out {out}"
step aggregate "Aggregation cost vs patch encoding (issue #4)" \
  "python -m benchmarks.aggregate --patches 100000 --repeats 3 --encoder-batches 0 --out {out}" \
  "python -m benchmarks.aggregate --patches 100000 --repeats 5 --encoder-batches 3 --out {out}"
step index "Indexing speed, time by stage and peak memory (issue #5)" \
  "python -m benchmarks.index --out {out} --slides 2,5 --models tiny" \
  "python -m benchmarks.index --out {out}"
step search_small "Search API latency vs bare FAISS: small vectors, d = 128, K = 8 (issue #6)" \
  "python -m benchmarks.search --sizes 1000,10000,100000 --flat-at '' --queries 100 --warmup 10 --out {out}" \
  "python -m benchmarks.search --sizes 1000,10000,100000 --out {out}"
step search_model "Search API latency vs bare FAISS: model-sized vectors, d = 512, K = 16 (issue #6)" \
  "python -m benchmarks.search --sizes 5000 --dim 512 --k 16 --flat-at '' --encoder none --queries 100 --warmup 10 --out {out}" \
  "python -m benchmarks.search --sizes 100000 --dim 512 --k 16 --flat-at '' --encoder none --out {out}"
step faiss "FAISS search speed by index kind (issue #7)" \
  "python -m benchmarks.search_faiss --out {out} --sizes 10000 --queries 200 --latency-queries 50 --seconds-per-point 0.5" \
  "python -m benchmarks.search_faiss --out {out} --sizes 10000,100000,1000000 --max-build-seconds 900"
step demo "Demo and leave-one-patient-out retrieval (issue #7)" \
  "slidesearch demo --out {out} --quiet > {out}/demo.txt" \
  "slidesearch demo --out {out} --quiet > {out}/demo.txt"
step incremental "Adding one slide, automatic merges included (issue #11)" \
  "python -m benchmarks.incremental --sizes 100,1000,10000 --patches 100 --adds 12 --out {out}" \
  "python -m benchmarks.incremental --sizes 100,1000,10000 --patches 1000 --adds 30 --out {out}"
step scale "Out-of-core scale: trained-once IVF-PQ, exact re-rank (issue #13)" \
  "python -m benchmarks.scale --sizes 1e5 --nlist 1024 --slides-at 0 --queries 200 --out {out}" \
  "python -m benchmarks.scale --sizes 1e5,1e6,1e7 --slides-at 1e5 --out {out}"
step serve "Serving under load (issue #14)" \
  "python -m benchmarks.serve --slides 5000 --dim 128 --k 8 --clients 1,4 --seconds 5 --out {out}" \
  "python -m benchmarks.serve --out {out}"
step ray "The Ray engine (issue #15)" \
  "python -m benchmarks.ray_engine --slides 4 --repeats 1 --warmup 0 --commit-slides 4 --commit-patches 5000 --out {out}" \
  "python -m benchmarks.ray_engine --out {out}"
step multistain "Multi-stain cases, cross-stain search, slide-encoder space (issue #16)" \
  "python -m benchmarks.multistain --work {out}/work --out {out} --patients 24 --size 1024" \
  "python -m benchmarks.multistain --work {out}/work --out {out}/serial --patients 48 --size 1024 --ihc-section serial --concentration 6 && python -m benchmarks.multistain --work {out}/work2 --out {out}/same --patients 48 --size 1024"
step reports "Reports as a second view (issue #17)" \
  "python -m benchmarks.reports --slides 30 --work {out}/work --out {out}" \
  "python -m benchmarks.reports --slides 60 --work {out}/work --out {out}"
step segments "The live store against the same collection compacted: 10 live segments vs 1 (issue #23)" \
  "python -m benchmarks.search --sizes 30000 --segments 1,10 --flat-at '' --encoder none --queries 50 --warmup 10 --out {out}" \
  "python -m benchmarks.search --sizes 30000 --segments 1,10 --flat-at '' --encoder none --queries 100 --out {out}"
step growth "The live store growing by small commits under the merge policy, against compacted (issue #23)" \
  "python -m benchmarks.growth --slides 8000 --commit 400 --every 4 --queries 20 --warmup 5 --out {out}" \
  "python -m benchmarks.growth --slides 30000 --commit 500 --every 3 --out {out}"
step reports_real "Report search on real reports: quality against the baselines, speed, first query (issue #27)" \
  "python -m benchmarks.reports_real --speed --first-query --out {out}/work --results {out}" \
  "python -m benchmarks.reports_real --tune --speed --first-query --out {out}/work --results {out}"
step serve_mixed "Serving a lab: never stalls, memory bounded (issue #22)" \
  "python -m benchmarks.serve --mixed --seconds 10 --patients 6 --size 1024 --out {out}" \
  "python -m benchmarks.serve --mixed --seconds 30 --patients 12 --size 2048 --out {out}"
step dicomweb "Slides from the hospital archive: patch reads over DICOMweb vs disk (issue #24)" \
  "python -m benchmarks.dicomweb --size 4096 --repeats 3 --out {out}" \
  "python -m benchmarks.dicomweb --size 8192 --repeats 5 --out {out}" orthanc
step ingest "Ingest against the machine's limit (issue #26)" \
  "python -m benchmarks.ingest --big 2 --small 100 --small-memory 30 --limit-small 8 --work {out}/work --out {out}" \
  "python -m benchmarks.ingest --work {out}/work --out {out}"
step gpu "GPU: encoding, FAISS and index on CUDA (benchmarks/gpu.py)" \
  "python -m benchmarks.gpu --quick --out {out}" \
  "python -m benchmarks.gpu --out {out}" gpu

# ---- options ----------------------------------------------------------------------------------------------
QUICK=0 OUT="" ONLY="" LIST=0 PUBLISH=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    --only) ONLY="${2:?--only needs step names}"; shift ;;
    --list) LIST=1 ;;
    --publish) PUBLISH=1 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
MODE=$([ $QUICK = 1 ] && echo quick || echo full)
OUT="${OUT:-out/reproduce$([ $QUICK = 1 ] && echo -quick || true)}"
selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
if [ -n "$ONLY" ]; then
  for name in ${ONLY//,/ }; do
    [[ " ${NAMES[*]} " == *" $name "* ]] || { echo "error: no step '$name' (steps: ${NAMES[*]})" >&2; exit 2; }
  done
fi
command_of() { if [ $QUICK = 1 ]; then echo "${QUICKS[$1]}"; else echo "${FULLS[$1]}"; fi; }

if [ $LIST = 1 ]; then
  for i in "${!NAMES[@]}"; do
    selected "${NAMES[$i]}" && printf '%-13s %s\n%13s %s\n' "${NAMES[$i]}" "${TITLES[$i]}" "" "$(command_of "$i")"
  done
  exit 0
fi

# ---- run --------------------------------------------------------------------------------------------------
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -rf "$OUT/figures" && mkdir -p "$OUT/figures"
FACTS="$(python -m benchmarks.common)"
BODY="$OUT/.sections.md" && : > "$BODY"
FAILED=() START=$SECONDS

for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}"
  selected "$name" || continue
  dir="$OUT/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  cmd="$(command_of "$i")"
  cmd="${cmd//\{out\}/$dir}"
  shown="${cmd//$ROOT\//}"
  shown="${shown//$OUT/OUT}"
  {
    echo "## ${TITLES[$i]}"
    echo
  } >> "$BODY"
  if [ -n "${NEEDS[$i]}" ] && ! why="$("needs_${NEEDS[$i]}")"; then
    echo "[$name] skipped: $why" >&2
    printf 'Not run: %s. Where it can run: `%s`.\n\n' "$why" "$shown" >> "$BODY"
    continue
  fi
  echo "[$name] $shown" >&2
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  t0=$SECONDS
  set +e
  bash -c "$cmd" > "$dir/log.txt" 2>&1
  rc=$?
  set -e
  wall=$((SECONDS - t0))
  load_after=$(cut -d' ' -f1 /proc/loadavg)
  echo "[$name] exit $rc after ${wall} s" >&2
  {
    printf 'Step `%s` (%s mode): `%s` (OUT = this run'"'"'s output folder), %d s wall, 1-min load average %s → %s.\n\n' \
      "$name" "$MODE" "$shown" "$wall" "$load_before" "$load_after"
    if [ $rc -ne 0 ]; then
      printf '**FAILED (exit %d).** Last lines of its log:\n\n```\n%s\n```\n\n' "$rc" "$(tail -n 15 "$dir/log.txt")"
    fi
    while IFS= read -r md; do
      sed "s#$OUT#OUT#g; s#$ROOT/##g" "$md"
      echo
    done < <(find "$dir" -name 'bench*.md' | sort)
    while IFS= read -r txt; do
      printf '`%s`:\n\n```\n%s\n```\n\n' "${txt#$dir/}" "$(sed "s#$OUT#OUT#g; s#$ROOT/##g" "$txt")"
    done < <(find "$dir" -maxdepth 1 -name '*.txt' -not -name log.txt | sort)
    while IFS= read -r png; do
      rel="${png#$dir/}"
      target="figures/$name-${rel//\//-}"
      cp "$png" "$OUT/$target"
      printf '![%s](%s)\n\n' "$name: ${rel%.png}" "$target"
    done < <(find "$dir" -name 'bench*.png' | sort)
  } >> "$BODY"
  [ $rc -eq 0 ] || FAILED+=("$name")
done

TOTAL=$((SECONDS - START))
{
  echo "# Benchmark results"
  echo
  echo "Generated by \`bash benchmarks/reproduce.sh$([ $QUICK = 1 ] && echo ' --quick' || true)\` ($MODE mode$([ $QUICK = 1 ] && echo ': reduced sizes' || true)) in ${TOTAL} s. ${FACTS}"
  echo "Every figure below comes from the command shown in its section, run on this code with fresh indexes; the"
  echo "earlier log of figures, with what superseded them, is [HISTORY.md](HISTORY.md). Figures from one run compare"
  echo "with each other; compare across runs only as ratios, and mind each section's load average (a shared machine)."
  if [ $QUICK = 1 ]; then
    echo
    echo "Quick mode measures reduced sizes. The sizes the targets name (10⁵ slides, 10⁶–10⁷ patch vectors, the full demo"
    echo "and benchmark cohorts) are the full run's, \`bash benchmarks/reproduce.sh\` (hours on 2 cores); where it has not"
    echo "run on this code, HISTORY.md holds the last full-size figures, from older code and marked so."
  fi
  if [ ${#FAILED[@]} -gt 0 ]; then echo; echo "**Failed steps: ${FAILED[*]}.**"; fi
  echo
  cat "$BODY"
} > "$OUT/RESULTS.md"
rm -f "$BODY"
echo "wrote $OUT/RESULTS.md (${TOTAL} s$([ ${#FAILED[@]} -gt 0 ] && echo "; FAILED: ${FAILED[*]}" || true))" >&2

if [ $PUBLISH = 1 ]; then
  if [ ${#FAILED[@]} -gt 0 ]; then echo "error: not publishing a run with failed steps" >&2; exit 1; fi
  cp "$OUT/RESULTS.md" benchmarks/RESULTS.md
  # hand runs at full sizes (named commits) follow as an appendix until a full run replaces them
  [ -f benchmarks/full-runs.md ] && { echo; cat benchmarks/full-runs.md; } >> benchmarks/RESULTS.md
  mkdir -p benchmarks/figures
  rm -f benchmarks/figures/*.png  # the current figures only (HISTORY.md's live in benchmarks/figures/history/)
  cp "$OUT"/figures/*.png benchmarks/figures/ 2>/dev/null || true
  echo "published into benchmarks/RESULTS.md and benchmarks/figures/" >&2
fi
[ ${#FAILED[@]} -eq 0 ]
