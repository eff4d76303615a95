"""Passphrases people write down: generated from a published word list, or chosen and checked.

The device key file and a recovery kit can both be copied and attacked offline, where only
scrypt's cost slows the attacker down. So a generated passphrase carries 8 words from the EFF
large wordlist (7776 words, 12.9 bits each: 103 bits), and a chosen one must take zxcvbn at
least 10^12 guesses (about 40 bits). At scrypt's cost (2^17 or more, 128 MiB a guess) a GPU
manages roughly a thousand guesses a second, so that is some 30 GPU-years; zxcvbn's own top
score starts at 10^10, a hundred times fewer. Reading an existing file never checks: only
choosing does.
"""

from __future__ import annotations

import functools
import math
import secrets
from importlib import resources

from .errors import CloudguardError, UsageError
from .results import PassphraseResult

WORDLIST = "eff_large_wordlist.txt"
WORDLIST_SIZE = 7776  # 6**5: five dice per word
GENERATED_WORDS = 8
MIN_GUESSES_LOG10 = 12
# zxcvbn refuses longer input, and its time grows faster than the length; a passphrase is at
# least as strong as its first 72 characters, so those are what it rates.
ZXCVBN_MAX_LENGTH = 72
# Words an attacker would try first against a cloudguard file.
_CONTEXT_WORDS = ("cloudguard", "passphrase", "password", "recovery", "kit", "vault", "device",
                  "key")
GENERATED_HINT = "or run 'cloudguard key passphrase' for a generated one"


@functools.cache
def wordlist() -> tuple[str, ...]:
    """The EFF list as shipped in cloudguard/data (dice number, tab, word per line)."""
    text = resources.files("cloudguard").joinpath("data", WORDLIST).read_text("utf-8")
    words = tuple(line.split("\t")[-1] for line in text.splitlines())
    if len(words) != WORDLIST_SIZE or len(set(words)) != WORDLIST_SIZE:
        raise CloudguardError(f"the word list {WORDLIST} in the cloudguard package is damaged; "
                              "reinstall cloudguard")
    return words


def entropy_bits(words: int = GENERATED_WORDS) -> float:
    return words * math.log2(WORDLIST_SIZE)


def generate(words: int = GENERATED_WORDS) -> str:
    """Space-separated words, each drawn uniformly with `secrets`."""
    choices = wordlist()
    return " ".join(secrets.choice(choices) for _ in range(words))


def offered() -> PassphraseResult:
    """``cloudguard key passphrase``: a new generated passphrase and its strength."""
    return PassphraseResult(passphrase=generate(), bits=round(entropy_bits(), 1))


def rate(passphrase: str) -> tuple[float, str]:
    """zxcvbn's estimate of the guesses that find this passphrase (log10), and its warning."""
    from zxcvbn import zxcvbn  # loads ~1 MB of frequency lists: only when someone chooses

    result = zxcvbn(passphrase[:ZXCVBN_MAX_LENGTH], user_inputs=list(_CONTEXT_WORDS))
    return float(result["guesses_log10"]), str(result["feedback"]["warning"])


def require_strong(passphrase: str, purpose: str, hint: str = GENERATED_HINT) -> None:
    """Refuse (exit 2) a chosen passphrase that zxcvbn rates below MIN_GUESSES_LOG10."""
    log10, warning = rate(passphrase)
    if log10 >= MIN_GUESSES_LOG10:
        return
    why = (warning or "too short or too common").rstrip(".")
    raise UsageError(
        f"the passphrase for {purpose} is too weak: about 10^{math.floor(log10)} guesses find "
        f"it, at least 10^{MIN_GUESSES_LOG10} are needed ({why[0].lower() + why[1:]}); use five "
        f"or more random words, {hint}")
