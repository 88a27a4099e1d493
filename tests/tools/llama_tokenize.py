"""Reference token ids from llama.cpp's own tokenizer (llama-cpp-python, vocabulary only) for the
texts of a JSON fixture, written back into it: `python llama_tokenize.py MODEL.gguf FIXTURE.json`.

The fixture is a list of {"text", "special"}; each entry gets "ids" (no BOS added). `special`
says whether control tokens written in the text are parsed as such (llama.cpp's parse_special).
Run by hand when the texts change (`tests/tools/pyenv-llama` makes the environment); the Rust test
compares the tokenizer built from the GGUF with these ids.
"""
import json
import sys

from llama_cpp import Llama


def main() -> None:
    model_path, fixture = sys.argv[1], sys.argv[2]
    llm = Llama(model_path=model_path, vocab_only=True, verbose=False)
    with open(fixture, encoding="utf-8") as f:
        cases = json.load(f)
    for case in cases:
        ids = llm.tokenize(case["text"].encode("utf-8"), add_bos=False, special=case["special"])
        case["ids"] = list(ids)
    with open(fixture, "w", encoding="utf-8") as f:
        lines = [json.dumps(case, ensure_ascii=False) for case in cases]
        f.write("[\n" + ",\n".join(lines) + "\n]\n")


if __name__ == "__main__":
    main()
