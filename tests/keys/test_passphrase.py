"""Passphrases (issue 7 item 9): kits get a generated one, chosen ones must be strong, and
reading an existing file is never checked. Issue 9 item 20: a prompt asks again after a typo,
clone asks for the kit's passphrase first, and the device key file and kits each have their
own variable (CLOUDGUARD_PASSPHRASE, CLOUDGUARD_KIT_PASSPHRASE), or a file (``*_FILE``)."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
from helpers import CLOUDGUARD, PASSPHRASE, cg, cg_json, cg_proc, tree

from cloudguard import format as fmt
from cloudguard import keys
from cloudguard import passphrase as pw
from cloudguard.chain import Secret
from cloudguard.errors import KeyStoreError, UsageError

# The SHA-256 of eff_large_wordlist.txt as EFF publishes it (cloudguard/data/README.md).
EFF_LARGE_SHA256 = "addd35536511597a02fa0a9ff1e5284677b8883b83e986e43f15a3db996b903e"
WEAK = ("x", "password1", "test-passphrase", "Summer2024!", "aaaaaaaaaaaaaaaaaaaa")


def vault(remote: str, tmp_path: Path) -> Path:
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("kept by the kit")
    cg("init", str(a), "--remote", remote)
    cg("push", "--folder", str(a))
    return a


def test_shipped_wordlist_is_eff_large_unmodified() -> None:
    raw = resources.files("cloudguard").joinpath("data", pw.WORDLIST).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == EFF_LARGE_SHA256
    words = pw.wordlist()
    assert len(set(words)) == 7776 and words[0] == "abacus" and words[-1] == "zoom"


def test_generated_passphrase_is_eight_list_words_over_100_bits() -> None:
    words = set(pw.wordlist())
    made = [pw.generate() for _ in range(20)]
    for phrase in made:
        parts = phrase.split(" ")
        assert len(parts) == 8 and all(p in words for p in parts)
        pw.require_strong(phrase, "a test")  # a generated one always passes the check
    assert len(set(made)) == 20
    assert pw.entropy_bits() >= 100


def test_key_export_generates_a_passphrase_that_opens_the_kit(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    result = cg_json("key", "export", str(kit), "--folder", str(a))
    phrase = result["passphrase"]
    assert phrase != PASSPHRASE
    assert len(phrase.split(" ")) >= 8 and set(phrase.split(" ")) <= set(pw.wordlist())
    assert keys.read_kit(kit, phrase).rid == result["id"]
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        keys.read_kit(kit, PASSPHRASE)  # CLOUDGUARD_PASSPHRASE played no part
    assert phrase not in kit.read_text()
    # A second device joins with it; its new key file keeps CLOUDGUARD_PASSPHRASE.
    monkeypatch.setenv("CLOUDGUARD_KIT_PASSPHRASE", phrase)
    b = tmp_path / "b"
    cg("clone", local_remote, str(b), "--key-file", str(kit))
    assert tree(b) == tree(a)


def test_generated_passphrase_is_shown_once_on_stderr(local_remote: str, tmp_path: Path
                                                      ) -> None:
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    proc = cg_proc("key", "export", str(kit), "--folder", str(a))
    assert proc.returncode == 0, proc.stderr
    assert "write it down" in proc.stderr and "only this once" in proc.stderr
    lines = [ln.strip() for ln in proc.stderr.splitlines()]
    phrase = next(ln for ln in lines if len(ln.split(" ")) == 8 and
                  set(ln.split(" ")) <= set(pw.wordlist()))
    assert phrase not in proc.stdout and f"written to {kit}" in proc.stdout
    keys.read_kit(kit, phrase)


@pytest.mark.parametrize("weak", WEAK)
def test_weak_chosen_kit_passphrase_is_refused(local_remote: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, weak: str
                                               ) -> None:
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    listing = sorted(os.listdir(Path(local_remote) / "keys"))
    before = [(Path(local_remote) / "keys" / n).read_bytes() for n in listing]
    monkeypatch.setenv("CLOUDGUARD_KIT_PASSPHRASE", weak)
    result = cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase", code=2)
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "too weak" in message
    assert "leave out --choose-passphrase to get a generated one" in message
    assert not kit.exists()
    assert [(Path(local_remote) / "keys" / n).read_bytes() for n in listing] == before


def test_strong_chosen_kit_passphrase_is_accepted(local_remote: str, tmp_path: Path) -> None:
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    result = cg_json("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    assert result["passphrase"] is None  # a chosen one is never echoed (the key stays: null)
    assert keys.read_kit(kit, PASSPHRASE).rid == result["id"]


def test_weak_device_key_passphrase_is_refused(local_remote: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a"
    a.mkdir()
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", "x")
    proc = cg_proc("init", str(a), "--remote", local_remote)
    assert proc.returncode == 2
    assert "passphrase for this device's key file is too weak" in proc.stderr
    assert "cloudguard key passphrase" in proc.stderr
    assert not os.listdir(local_remote)
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", PASSPHRASE)
    cg("init", str(a), "--remote", local_remote)  # nothing was left half made


def test_reading_is_never_checked(local_remote: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A device key file and a kit sealed with a weak passphrase (by an older version) open."""
    a = vault(local_remote, tmp_path)
    (key_file,) = Path(os.environ["CLOUDGUARD_HOME"]).rglob("device.key")
    doc = json.loads(key_file.read_text())
    raw = fmt.open_with_passphrase(doc, PASSPHRASE)
    meta = {k: v for k, v in doc.items() if k not in ("kdf", "nonce", "ct")}
    key_file.write_text(json.dumps(fmt.seal_with_passphrase(raw, "x", meta, log_n=10)))
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", "x")
    proc = cg_proc("status", "--folder", str(a))  # a fresh process: the key file is read
    assert proc.returncode == 0, proc.stderr

    kit = tmp_path / "weak-kit.json"
    secret = Secret.generate()
    keys.write_kit(kit, "v" * 64, "r" * 16, "c" * 64, secret, "x")
    assert keys.read_kit(kit, "x").secret.raw() == secret.raw()
    assert keys.get_passphrase("an existing file") == "x"


def fake_prompts(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> list[str]:
    """getpass answers ``answers`` in turn on a (pretend) terminal; returns the prompts."""
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE", raising=False)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    asked: list[str] = []

    def fake(prompt: str = "") -> str:
        asked.append(prompt)
        return answers.pop(0)
    monkeypatch.setattr(keys.getpass, "getpass", fake)
    return asked


NEW = "New passphrase for this device's key file: "
REPEAT = "Repeat the new passphrase for this device's key file: "


def test_prompted_passphrase_is_checked_before_it_is_repeated(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    asked = fake_prompts(monkeypatch, ["hunter2", PASSPHRASE, PASSPHRASE])
    assert keys.get_passphrase(keys.DEVICE_KEY_FILE, confirm=True) == PASSPHRASE
    assert asked == [NEW, NEW, REPEAT]  # a weak one is not repeated: asked for anew
    assert "too weak" in capsys.readouterr().err
    asked = fake_prompts(monkeypatch, ["hunter2"] * 3)
    with pytest.raises(UsageError, match="too weak"):
        keys.get_passphrase(keys.DEVICE_KEY_FILE, confirm=True)
    assert asked == [NEW] * 3
    fake_prompts(monkeypatch, ["hunter2"])
    assert keys.get_passphrase("an existing file") == "hunter2"  # reading: no check


def test_mismatched_repeat_asks_again_up_to_three_times(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    asked = fake_prompts(monkeypatch, [PASSPHRASE, PASSPHRASE + "!", PASSPHRASE, PASSPHRASE])
    assert keys.get_passphrase(keys.DEVICE_KEY_FILE, confirm=True) == PASSPHRASE
    assert asked == [NEW, REPEAT, NEW, REPEAT]
    assert capsys.readouterr().err == ("cloudguard: the two passphrases for this device's key "
                                       "file do not match; try again\n")
    asked = fake_prompts(monkeypatch, [PASSPHRASE, "typo"] * 3)
    with pytest.raises(UsageError, match="the two passphrases for this device's key file do "
                                         "not match"):
        keys.get_passphrase(keys.DEVICE_KEY_FILE, confirm=True)
    assert asked == [NEW, REPEAT] * 3
    asked = fake_prompts(monkeypatch, ["", PASSPHRASE, PASSPHRASE])
    assert keys.get_passphrase(keys.DEVICE_KEY_FILE, confirm=True) == PASSPHRASE
    assert asked == [NEW, NEW, REPEAT]  # an empty answer too


def test_long_passphrases_are_rated_on_their_first_72_characters() -> None:
    long = "correct horse battery staple " * 10
    assert pw.rate(long)[0] >= pw.MIN_GUESSES_LOG10  # no ValueError from zxcvbn
    with pytest.raises(UsageError):
        pw.require_strong("a" * 200, "a test")


def test_key_passphrase_command_prints_a_generated_one() -> None:
    result = cg_json("key", "passphrase")
    assert len(result["passphrase"].split(" ")) == 8 and result["bits"] >= 100
    assert cg("key", "passphrase").stdout.strip() != result["passphrase"]


# --- issue 9 item 20: where passphrases come from, and what clone asks -------------------


KIT_PASSPHRASE = "kit only: walnut ferry tundra magnet"


def test_three_character_device_passphrase_is_refused_at_init_and_clone(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", "abc")
    proc = cg_proc("clone", local_remote, str(tmp_path / "b"), "--key-file", str(kit))
    assert proc.returncode == 2, proc.stderr
    assert "passphrase for this device's key file is too weak" in proc.stderr
    assert not (tmp_path / "b").exists()
    proc = cg_proc("init", str(tmp_path / "c"), "--remote", str(tmp_path / "remote-c"))
    assert proc.returncode == 2 and "too weak" in proc.stderr
    # from a file, too
    secret = tmp_path / "pass.txt"
    secret.write_text("abc\n")
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE_FILE", str(secret))
    proc = cg_proc("init", str(tmp_path / "c"), "--remote", str(tmp_path / "remote-c"))
    assert proc.returncode == 2 and "too weak" in proc.stderr


def test_kit_passphrase_is_not_taken_from_the_device_passphrase(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    monkeypatch.delenv("CLOUDGUARD_KIT_PASSPHRASE")
    proc = cg_proc("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    assert proc.returncode == 1 and not kit.exists()
    assert proc.stderr.strip() == (f"cloudguard: error: a passphrase is needed for the recovery "
                                   f"kit {kit}: set CLOUDGUARD_KIT_PASSPHRASE (or "
                                   "CLOUDGUARD_KIT_PASSPHRASE_FILE) or run on a terminal")
    monkeypatch.setenv("CLOUDGUARD_KIT_PASSPHRASE", KIT_PASSPHRASE)
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    assert keys.read_kit(kit, KIT_PASSPHRASE)

    monkeypatch.delenv("CLOUDGUARD_KIT_PASSPHRASE")
    b = tmp_path / "b"
    proc = cg_proc("clone", local_remote, str(b), "--key-file", str(kit))
    assert proc.returncode == 1 and "set CLOUDGUARD_KIT_PASSPHRASE" in proc.stderr
    assert not b.exists()
    monkeypatch.setenv("CLOUDGUARD_KIT_PASSPHRASE", KIT_PASSPHRASE)
    proc = cg_proc("clone", local_remote, str(b), "--key-file", str(kit))
    assert proc.returncode == 0, proc.stderr
    assert tree(b) == tree(a)
    # the new device's key file took CLOUDGUARD_PASSPHRASE, not the kit's
    key_files = sorted(Path(os.environ["CLOUDGUARD_HOME"]).rglob("device.key"))
    assert len(key_files) == 2
    for key_file in key_files:
        fmt.open_with_passphrase(json.loads(key_file.read_text()), PASSPHRASE)


def test_passphrase_file_gives_the_first_line(local_remote: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    device_file, kit_file = tmp_path / "device-pass", tmp_path / "kit-pass"
    device_file.write_text(f"{PASSPHRASE}\nnot part of it\n")
    kit_file.write_text(f"{KIT_PASSPHRASE}\r\n")
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    monkeypatch.delenv("CLOUDGUARD_KIT_PASSPHRASE")
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE_FILE", str(device_file))
    monkeypatch.setenv("CLOUDGUARD_KIT_PASSPHRASE_FILE", str(kit_file))
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("sealed with a passphrase from a file")
    assert cg_proc("init", str(a), "--remote", local_remote).returncode == 0
    (key_file,) = Path(os.environ["CLOUDGUARD_HOME"]).rglob("device.key")
    fmt.open_with_passphrase(json.loads(key_file.read_text()), PASSPHRASE)
    assert cg_proc("push", "--folder", str(a)).returncode == 0  # a fresh process reads it
    kit = tmp_path / "kit.json"
    proc = cg_proc("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    assert proc.returncode == 0, proc.stderr
    assert keys.read_kit(kit, KIT_PASSPHRASE)
    proc = cg_proc("clone", local_remote, str(tmp_path / "b"), "--key-file", str(kit))
    assert proc.returncode == 0, proc.stderr


def test_passphrase_file_errors_name_the_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a"
    missing = tmp_path / "no-such-file"
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE_FILE", str(missing))
    proc = cg_proc("init", str(a), "--remote", str(tmp_path / "remote"))
    assert proc.returncode == 2
    assert proc.stderr == (f"cloudguard: error: cannot read the passphrase from "
                           f"CLOUDGUARD_PASSPHRASE_FILE={missing}: No such file or directory\n")
    empty = tmp_path / "empty"
    empty.write_text("\nsecond line\n")
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE_FILE", str(empty))
    with pytest.raises(UsageError, match=f"CLOUDGUARD_PASSPHRASE_FILE={empty}: the first line "
                                         "is empty"):
        keys.get_passphrase("a test")
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", PASSPHRASE)
    with pytest.raises(UsageError, match="both CLOUDGUARD_PASSPHRASE and "
                                         "CLOUDGUARD_PASSPHRASE_FILE are set"):
        keys.get_passphrase("a test")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\n")
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE_FILE", str(binary))
    with pytest.raises(UsageError, match=f"CLOUDGUARD_PASSPHRASE_FILE={binary}"):
        keys.get_passphrase("a test")


class Terminal:
    """The CLI in a child process on a pseudo-terminal of its own, as a person runs it:
    getpass reads from the controlling terminal, so prompts and answers are real."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        self.master, slave = pty.openpty()
        # A new session, then opening the terminal, makes it the child's controlling one.
        claim = ("import os, sys; os.setsid(); os.close(os.open(os.ttyname(0), os.O_RDWR)); "
                 "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
        self.proc = subprocess.Popen([sys.executable, "-c", claim, *CLOUDGUARD[1:], *args],
                                     stdin=slave, stdout=slave, stderr=slave, cwd=cwd)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 30) -> str:
        """Read until ``text`` appears; returns what came before it."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no {text!r} within {timeout} s; got {self.seen!r}")
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the program ended before {text!r}; got {self.seen!r}")
            self.seen += chunk.decode("utf-8", "replace")
        before, _, self.seen = self.seen.partition(text)
        return before

    def answer(self, prompt: str, text: str) -> str:
        before = self.expect(prompt)
        os.write(self.master, text.encode() + b"\n")
        return before

    def wait(self) -> tuple[int, str]:
        rest = self.seen
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            rest += chunk.decode("utf-8", "replace")
        os.close(self.master)
        return self.proc.wait(timeout=60), rest


def test_clone_asks_for_the_kit_first_then_the_new_device_passphrase(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kit's passphrase first, then this device's new one, each named; a weak or
    mismatched new one is asked for again instead of ending the clone."""
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    monkeypatch.setenv("CLOUDGUARD_KIT_PASSPHRASE", KIT_PASSPHRASE)
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    monkeypatch.delenv("CLOUDGUARD_KIT_PASSPHRASE")
    b = tmp_path / "b"
    term = Terminal("clone", local_remote, str(b), "--key-file", str(kit))
    term.answer(f"Passphrase for the recovery kit {kit}: ", KIT_PASSPHRASE)
    term.answer(NEW, "abc")
    assert "passphrase for this device's key file is too weak" in term.answer(NEW, PASSPHRASE)
    term.answer(REPEAT, PASSPHRASE + " typo")
    assert "do not match; try again" in term.answer(NEW, PASSPHRASE)
    term.answer(REPEAT, PASSPHRASE)
    code, rest = term.wait()
    assert code == 0, rest
    assert "Cloned into" in rest and "Passphrase" not in rest
    assert tree(b) == tree(a)
    key_files = [k for k in Path(os.environ["CLOUDGUARD_HOME"]).rglob("device.key")]
    assert len(key_files) == 2
    for key_file in key_files:
        fmt.open_with_passphrase(json.loads(key_file.read_text()), PASSPHRASE)


def test_a_systemd_credential_unlocks_the_file_keystore(local_remote: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The service unit's way (issue 11): LoadCredentialEncrypted=cloudguard-passphrase:...
    puts the passphrase in $CREDENTIALS_DIRECTORY; no Environment= line holds it."""
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "cloudguard-passphrase").write_text(PASSPHRASE + "\n")
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    keys.drop_cached_keys()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert cg_json("status", "--folder", str(folder))["in_sync"]
    keys.drop_cached_keys()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "empty"))
    refused = cg_proc("status", "--folder", str(folder))
    assert refused.returncode == 1 and "CLOUDGUARD_PASSPHRASE" in refused.stderr
