# Everything starts from nothing: `make test` and `make serve` create the virtual environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# tcmalloc keeps large tensors' memory instead of returning it to the OS after every step
# (glibc does, then pays page faults again): about 1.5x faster CPU training. Used where installed.
TCMALLOC := $(wildcard /lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)

.PHONY: install test serve data train-default finetune-default finetune-format bench bench-grpc bench-format protos clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

test: $(INSTALLED)
	$(PY) -m pytest

# Serve the committed default model (models/en-es) on localhost:50051; Ctrl-C stops it gracefully.
serve: $(INSTALLED)
	$(VENV)/bin/rosetta-serve --repository models

data: $(INSTALLED)
	$(VENV)/bin/rosetta-prepare-data --corpus data/corpus --out data/en-es

# The default model's training command (see docs/training.md); re-run it to resume.
train-default: data
	LD_PRELOAD=$(firstword $(TCMALLOC)) $(VENV)/bin/rosetta-train --train data/en-es/train.tsv \
		--valid data/en-es/valid.tsv --out runs/en-es --vocab-size 8000 --lr 7e-4 --warmup-steps 800 \
		--max-steps 12000 --eval-every 500 --save-every 100 --valid-bleu-sentences 400

# Its second stage: a short fine-tune of the base run's best checkpoint on the same split, which
# now holds the everyday phrases (docs/training.md); re-run it to resume.
finetune-default: data
	@test -d runs/en-es/best || { echo "runs/en-es/best is missing: run make train-default first"; exit 1; }
	LD_PRELOAD=$(firstword $(TCMALLOC)) $(VENV)/bin/rosetta-train --init-from runs/en-es/best \
		--train data/en-es/train.tsv --valid data/en-es/valid.tsv --out runs/en-es-phrases --lr 3e-4 \
		--warmup-steps 100 --max-steps 600 --eval-every 200 --save-every 50 --valid-bleu-sentences 400

# The third stage: version 3 (the phrase fine-tune, taken from the git history) learns to carry
# sentinels (placeholders, tags, glossary terms; docs/format.md) on make data's train.format.tsv;
# it was exported as version 4. Re-run it to resume.
FORMAT_BASE := runs/en-es-3
$(FORMAT_BASE):
	mkdir -p $@ && git archive d80a639 models/en-es/3 | tar -x --strip-components=3 -C $@

finetune-format: data $(FORMAT_BASE)
	LD_PRELOAD=$(firstword $(TCMALLOC)) $(VENV)/bin/rosetta-train --init-from $(FORMAT_BASE) --sentinels \
		--train data/en-es/train.format.tsv --valid data/en-es/valid.tsv --out runs/en-es-format --lr 3e-4 \
		--warmup-steps 100 --max-steps 1400 --eval-every 350 --save-every 50 --valid-bleu-sentences 400

# Decoding speed of every engine on ../shared/bench/workload.toml (docs/benchmarks.md).
bench: data
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/decode_speed.py

# The gRPC service end to end (1/8/32/64 clients) against the runtime in-process (docs/benchmarks.md).
bench-grpc: data
	$(PY) bench/grpc_speed.py

# The format measures (placeholders, tags, glossary, quality) of the newest version (docs/format.md).
bench-format: data
	$(PY) bench/format_measures.py

# Regenerate the committed gRPC stubs after editing protos/rosetta/v1/translator.proto.
protos: $(INSTALLED)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --grpc_python_out=protos --pyi_out=protos \
		protos/rosetta/v1/translator.proto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
