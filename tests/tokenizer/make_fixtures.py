#!/usr/bin/env python3
"""Makes the tokenizer fixtures of tests/tokenizer/ with Hugging Face `tokenizers`.

Not part of the product or of the required tests: it needs `pip install tokenizers`
(a throwaway virtual environment will do) and the KJV (`bible -l0 "Gen1:1-Rev22:21"`,
Debian package bible-kjv). It writes, beside itself:

  gpt2/tokenizer.json    byte-level BPE as GPT-2 writes it: ByteLevel pre-tokenizer with
                         GPT-2's regex, 2000 tokens trained on the KJV, <|endoftext|>
  llama3/tokenizer.json  as Llama 3 writes it: Split(Llama 3's regex, Isolated) +
                         ByteLevel(use_regex=false), ignore_merges, special tokens; some
                         model ids moved to 70000 and up so that shards need uint32
  qwen2/tokenizer.json   as Qwen2 writes it: the NFC normalizer, Split(Qwen2's regex) +
                         ByteLevel(use_regex=false), 1500 tokens, Qwen2's special tokens
  sample.txt             a multilingual sample (bytes, with invalid UTF-8)
  sample.NAME.ids        the ids `tokenizers` gives for sample.txt with each of them

The golden ids: `tokenizers` takes only text (valid UTF-8), so the sample is cut at
invalid UTF-8 bytes, as Entente does: each valid run is encoded as text (no template
tokens), and each run of invalid bytes is handed to the BPE model as one word of
byte-level characters (tokenizer.model.tokenize).

Usage: make_fixtures.py KJV_TEXT_FILE
"""
import json
import os
import sys

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, trainers)

HERE = os.path.dirname(os.path.abspath(__file__))

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

SAMPLE = (
    "In the beginning God created the heaven and the earth. Don't, WON'T, it'S, they'LL, "
    "we'VE, I'M, you'D, she's 'tis.\r\n"
    "Numbers: 1 12 123 1234 12345678901, 3.14159, 1,000,000 and ٣٤٥ and १२३.\n\n\n"
    "   leading spaces, trailing spaces   \n\t\ttabs\tand\u00a0nbsp\u3000ideographic space\n"
    "العربية: في البدء خلق الله السماوات والأرض.\n"
    "हिन्दी: आदि में परमेश्वर ने आकाश और पृथ्वी की सृष्टि की।\n"
    "中文：起初，神创造天地。地是空虚混沌，渊面黑暗。\n"
    "Emoji: 👋🏽 👨‍👩‍👧‍👦 🇪🇺 ❤️ 🙂🙃\n"
    "Combining: e\u0301 a\u0308 n\u0303 \u1e9b\u0323 Zalgo: Z\u0351\u036b\u0343a\u0344l\u0303g\u0352o\n"
    "Mixed: naïve café résumé Straße ΑΒΓ αβγ Кириллица 'ſ\r\n\r\n"
    "Special in text: <|endoftext|> and <|begin_of_text|>x<|eot_id|> <|end_of_text|>\n"
    "Added: x [MASK] y a[MASK]b  [MASK]\t\n Selah. Selahs xSelah <br>  <br>\u2603\u2603  \u2603\u2603x\n"
    "Unicode edges: a\u180eb x\u0085 y a\u2028\u2029b \u200b\u200bz \ufeffhi it'\u017f THE'S "
    "K\u212a'K \u1680 \u202f \u205f x \x1c\x1d\x1e\x1f x tab\x0b\x0cx \U0001d7d8\U0001d7d9 "
    "\u2460\u2461 \u2167 \u01c5ungla \u1f88 \U0001F600\U0001F601 abc\u0300\u0301 d a\u0903b "
    "\U000E0001tag\n"
    "NFC: \u212b \u1100\u1161\u11a8 cafe\u0301 caf\u00e9 \u0041\u030a \ufb01 \u2126\n"
    "Punctuation!!! ??? ... --- (brackets) [x] {y} <z> @#$%^&*_+=|\\/~`\n"
    "    \n  \n\n"
).encode("utf-8")
# invalid UTF-8: a lone continuation byte, 0xff, a truncated sequence, an overlong
# encoding, a UTF-16 surrogate, a code point over U+10FFFF, and bytes at the very end
SAMPLE += b"bad: \x80 x\xffy \xe2\x82 z\xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 end\xc3"


def byte_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def runs(data):
    """(is_valid, bytes) runs of data: valid UTF-8 and invalid bytes."""
    text = data.decode("utf-8", errors="surrogateescape")
    out, cur, cur_valid = [], [], None
    for ch in text:
        valid = not (0xDC80 <= ord(ch) <= 0xDCFF)
        b = ch.encode("utf-8") if valid else bytes([ord(ch) - 0xDC00])
        if valid != cur_valid and cur:
            out.append((cur_valid, b"".join(cur)))
            cur = []
        cur_valid = valid
        cur.append(b)
    if cur:
        out.append((cur_valid, b"".join(cur)))
    return out


def golden_ids(tok, data):
    b2u = byte_to_unicode()
    ids = []
    for valid, run in runs(data):
        if valid:
            ids += tok.encode(run.decode("utf-8"), add_special_tokens=False).ids
        else:
            ids += [t.id for t in tok.model.tokenize("".join(b2u[b] for b in run))]
    return ids


def train(pre_tokenizer, ignore_merges, vocab_size, kjv, normalizer=None):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(kjv.splitlines(keepends=True), trainer)
    return tok


def save(tok, name):
    os.makedirs(os.path.join(HERE, name), exist_ok=True)
    path = os.path.join(HERE, name, "tokenizer.json")
    tok.save(path, pretty=False)
    ids = golden_ids(Tokenizer.from_file(path), SAMPLE)
    with open(os.path.join(HERE, "sample.%s.ids" % name), "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
    print("%s: %d bytes, sample %d ids" % (path, os.path.getsize(path), len(ids)))


def main():
    kjv = open(sys.argv[1], encoding="utf-8").read()
    with open(os.path.join(HERE, "sample.txt"), "wb") as f:
        f.write(SAMPLE)

    gpt2 = train(pre_tokenizers.ByteLevel(add_prefix_space=False), False, 2000, kjv)
    # as GPT-2's file has it: special, matched on normalized text
    gpt2.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=True)])
    save(gpt2, "gpt2")

    llama = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]),
        True, 3000, kjv)
    # move the last 50 model ids to 70000 and up: a vocabulary that needs uint32 shards
    spec = json.loads(llama.to_str())
    vocab = spec["model"]["vocab"]
    for tok_text, i in list(vocab.items()):
        if i >= len(vocab) - 50:
            vocab[tok_text] = 70000 + i - (len(vocab) - 50)
    llama = Tokenizer.from_str(json.dumps(spec))
    llama.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    # plain added tokens with the options HF honours when it splits them out
    llama.add_tokens([AddedToken("[MASK]", single_word=True, lstrip=True, rstrip=True),
                      AddedToken("Selah", single_word=True), AddedToken("<br>", lstrip=True),
                      AddedToken("☃☃", rstrip=True, normalized=False)])
    save(llama, "llama3")

    qwen = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]),
        False, 1500, kjv, normalizers.NFC())
    qwen.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    # matched on normalized text: its decomposed e + U+0301 matches the NFC "caf\u00e9"
    qwen.add_tokens([AddedToken("cafe\u0301", normalized=True)])
    save(qwen, "qwen2")


if __name__ == "__main__":
    main()
