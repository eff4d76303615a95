"""Making a vault (init) and joining one (clone): the descriptor, the genesis
commit, the folder marker, and the checks that keep a folder and its remote
apart.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from .. import audit, chain, remotes, trust
from .. import format as fmt
from .. import keys as keymod
from ..chain import Secret
from ..errors import (
    CloudguardError,
    IntegrityError,
    KeyStoreError,
    UsageError,
)
from ..held import device_key
from ..keys import now_iso
from ..layout import (
    DESCRIPTOR,
    _holds_vault,
    descriptor_hash,
    listing_descriptor,
    make_descriptor,
    parse_descriptor,
)
from ..results import CloneResult, InitResult
from ..session import UI
from ..state import (
    Binding,
    Index,
    all_bindings,
    check_unbound,
    find_binding,
    home,
    remove_marker,
    write_marker,
)
from ..transport import Transport, open_transport
from .pull import pull


def _new_binding(folder: Path, remote: str, vault_id: str, padding: str, name: str | None
                 ) -> Binding:
    return Binding(id=Binding.new_id(), folder=str(folder), remote=remote, vault_id=vault_id,
                   device=keymod.new_member_id(), device_name=name or socket.gethostname(),
                   keystore=keymod.choose_keystore(), padding=padding)


def _check_folder(folder: str) -> Path:
    path = Path(folder).expanduser()
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
    if not path.is_dir():
        raise UsageError(f"{folder} is not a folder")
    resolved = path.resolve()
    check_unbound(resolved)
    return resolved


def _check_apart(folder: str, transport: Transport) -> None:
    """Refuse a local remote inside the folder (every push would encrypt the vault into
    itself) and a folder inside a local remote (its plaintext would sit among the remote's
    objects, where a sync client or a backup of the remote takes it)."""
    root = transport.local_root()
    if root is None:
        return
    path = Path(folder).expanduser().resolve()
    root = root.resolve()
    where = transport.remote if str(root) == transport.remote else f"{transport.remote} ({root})"
    if root.is_relative_to(path):
        raise UsageError(f"the remote {where} is inside the folder {path}: every push would "
                         "encrypt the vault into itself; choose a remote outside the folder")
    if path.is_relative_to(root):
        raise UsageError(f"the folder {path} is inside the local remote {where}: its plaintext "
                         "would sit in the remote; choose a folder outside the remote")


def _check_exposed(folder: str, allow: bool) -> list[str]:
    """A folder that another sync client uploads keeps no secret, whatever we encrypt: refused
    before anything is made unless ``allow`` (--allow-exposed); then the findings are returned
    for the result."""
    from .. import doctor as checks

    path = Path(folder).expanduser().resolve()
    found = [f for f in checks.exposure(path, Path.home()) if f.level == "error"]
    if found and not allow:
        more = f" ({len(found) - 1} more: cloudguard doctor)" if len(found) > 1 else ""
        raise UsageError(f"{found[0].message}; {found[0].fix}, or pass --allow-exposed to "
                         f"accept it{more}")
    return [f.message for f in found]


def init_vault(folder: str, remote: str, padding: str = "padme", name: str | None = None,
               allow_exposed: bool = False) -> InitResult:
    if padding not in ("padme", "none"):
        raise UsageError(f"--padding {padding!r}: use padme or none")
    transport = open_transport(remote)
    _check_apart(folder, transport)
    exposed = _check_exposed(folder, allow_exposed)
    path = _check_folder(folder)
    existing = transport.list()
    if DESCRIPTOR in existing:
        raise UsageError(f"{remotes.redact(transport.remote)} already holds a cloudguard "
                         "vault; use cloudguard clone")
    if existing:
        raise UsageError(f"{remotes.redact(transport.remote)} is not empty; give an empty folder "
                         "or bucket path")
    secret = Secret.generate()
    rid = keymod.new_member_id()
    device_name = name or socket.gethostname()
    descriptor = make_descriptor(padding)
    kek = chain.new_kek()
    genesis, data, keyobj = chain.build(None, "", secret, rid, "genesis",
                                        {rid: secret.public("device")}, {}, kek, 1,
                                        {rid: device_name}, {}, descriptor_hash(descriptor),
                                        now_iso())
    vault_id = genesis.id
    binding = Binding(id=Binding.new_id(), folder=str(path), remote=transport.remote,
                      vault_id=vault_id, device=rid, device_name=device_name,
                      keystore=keymod.choose_keystore(), padding=padding)
    device_key(binding).create(secret)
    transport.ensure_root()
    transport.put_bytes(DESCRIPTOR, descriptor)
    trust.write(transport, None, genesis, data, keyobj)
    binding.save()
    write_marker(binding)
    index = Index(binding.dir / "index.db")
    index.set_meta("verified", [vault_id])
    index.set_meta("wrapped_under", genesis.kek)  # nothing to re-wrap in a new vault
    index.close()
    audit.record("init", vault=vault_id, device=binding.device)
    return InitResult(folder=str(path), remote=remotes.redact(transport.remote), vault=vault_id,
                      vault_code=fmt.vault_code(vault_id), device=binding.device,
                      keystore=binding.keystore, exposed=exposed)


def clone_vault(remote: str, folder: str, kit: str | None = None, name: str | None = None,
                ui: UI | None = None, vault_code: str | None = None,
                allow_exposed: bool = False) -> CloneResult:
    """Bind a folder to an existing vault; on any failure, undo the binding and the key."""
    exposed = _check_exposed(folder, allow_exposed)
    existed = Path(folder).expanduser().exists()
    path = _check_folder(folder)
    made: list[Binding] = []
    try:
        # one shape whether enrolled at once (a kit: the first pull's fields) or requested
        done = _clone(remote, path, kit, name, ui, made, vault_code)
        done.exposed = exposed
        return done
    except BaseException:
        for binding in made:
            if binding.enrolled or kit is not None:
                remove_marker(binding)
                _forget_binding(binding)
        if not existed and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


def _forget_binding(binding: Binding) -> None:
    device_key(binding).delete()
    shutil.rmtree(binding.dir, ignore_errors=True)


def _code(text: str) -> str:
    return text.strip().upper().replace(" ", "").replace("-", "")


def _find_vault(listing: dict[str, int], remote: str, wanted: str | None,
                vault_code: str | None) -> str:
    """The vault id is the genesis id; a new device takes it from a recovery kit, or checks
    it in full against the vault code the user read on an enrolled device."""
    geneses = sorted(p[1] for n in listing if (p := chain.parse_name(n)) and p[0] == 0
                     and not p[2])
    if wanted is not None:
        if wanted not in geneses:
            raise IntegrityError(f"{remote} does not hold vault {wanted} (its genesis commit "
                                 "is missing)")
        return wanted
    if vault_code is None:
        raise UsageError("give the vault code shown by 'cloudguard device list' on an enrolled "
                         "device (--vault-code): it proves this is your vault, not a copy "
                         "made by the provider")
    matching = [g for g in geneses if _code(fmt.vault_code(g)) == _code(vault_code)]
    if not matching:
        raise IntegrityError(f"{remote} holds no vault with code {vault_code}: wrong remote, "
                             "or the provider shows a fake vault")
    return matching[0]


def mount_binding(remote: str, kit: str | None = None, name: str | None = None,
                  ui: UI | None = None, vault_code: str | None = None) -> Binding:
    """The membership a mount of ``remote`` uses: this device's binding of that remote where
    there is one (a bound folder, or an earlier mount's), else a new member device of its own
    with no plaintext folder anywhere, enrolled by a kit or asked for by approval (the request
    stays; mount again once it is approved)."""
    spec = open_transport(remote).remote
    for binding in all_bindings():
        if binding.remote == spec and (binding.enrolled or binding.mount_only):
            return binding
    placeholder = home() / "mounts" / fmt.new_object_id()
    placeholder.mkdir(parents=True, mode=0o700)
    made: list[Binding] = []
    try:
        _clone(remote, placeholder, kit, name, ui, made, vault_code, mount_only=True)
    except BaseException:
        for binding in made:
            if binding.enrolled or kit is not None:
                _forget_binding(binding)
        shutil.rmtree(placeholder, ignore_errors=True)
        raise
    return find_binding(str(placeholder))


def _clone(remote: str, path: Path, kit: str | None, name: str | None, ui: UI | None,
           made: list[Binding], vault_code: str | None, mount_only: bool = False
           ) -> CloneResult:
    transport = open_transport(remote)
    _check_apart(str(path), transport)
    listing = {n: o.size for n, o in transport.list().items()}
    if not _holds_vault(listing):
        raise CloudguardError(f"no vault at {transport.remote}: it holds no {DESCRIPTOR} and "
                              "no vault objects; check the remote name and path")
    raw = listing_descriptor(transport.get_bytes, listing, transport.remote)
    doc = parse_descriptor(raw, transport.remote)
    opened = None
    if kit is not None:  # the kit's passphrase first: this device's new one is asked after
        opened = keymod.read_kit(Path(kit), keymod.get_passphrase(
            f"the recovery kit {kit}", var=keymod.KIT_PASSPHRASE_VAR))
    vault_id = _find_vault(listing, transport.remote, opened.vault if opened else None,
                           vault_code)
    binding = _new_binding(path, transport.remote, vault_id, doc.padding,
                           name)
    binding.mount_only = mount_only
    made.append(binding)
    me = device_key(binding).create()
    if opened is None:
        binding.enrolled = False
        request = chain.make_request(vault_id, binding.device, binding.device_name, now_iso(),
                                     me)
        fp = chain.read_request(request).fingerprint
        transport.put_bytes(f"{keymod.ENROLL_PREFIX}{binding.device}", request)
        binding.save()
        write_marker(binding)
        index = Index(binding.dir / "index.db")
        index.set_meta("fingerprint", fp)
        index.close()
        return CloneResult(folder=str(path), vault=vault_id, enrolled=False,
                           fingerprint=fp, device=binding.device)
    warn = (ui or UI()).warn
    anchor = [n for n in listing if (p := chain.parse_name(n)) and p[1] == opened.anchor
              and not p[2]]
    if not anchor:
        raise IntegrityError(f"{kit}: the commit that added this kit ({opened.anchor[:16]}...) "
                             "is gone from the remote: rolled back or deleted")
    try:
        ring = trust.open_ring(vault_id, listing, transport.get_bytes, descriptor_hash(raw),
                               opened.rid, opened.secret, None, warn)
    except KeyStoreError as exc:  # its message is for a device (approve, removed)
        raise KeyStoreError(f"{kit}: this recovery kit is no longer a member of the vault (it "
                            "was removed, so it cannot enrol a device); use a current kit, or "
                            "enrol by approval: cloudguard clone REMOTE FOLDER --vault-code "
                            "CODE") from exc
    if opened.anchor not in ring.view.commits:
        raise IntegrityError(f"{kit}: the commit that added this kit is not in the vault's "
                             "verified chain")
    if ring.view.members.get(opened.rid) is None or opened.rid not in ring.head.members:
        # the merged view decides (review round 3, R5); the head holds it once merged
        raise KeyStoreError(f"{kit}: this recovery kit was removed from the vault; use a "
                            "current kit, or enrol by approval: cloudguard clone REMOTE FOLDER "
                            "--vault-code CODE")
    _add_member(transport, None, ring, binding.device, me.public("device"), binding.device_name)
    binding.save()
    write_marker(binding)
    index = Index(binding.dir / "index.db")
    index.set_meta("verified", sorted(ring.view.commits))
    index.close()
    made.clear()  # enrolled: from here on the binding stands, even if the first pull fails
    if mount_only:  # nothing is ever written to its placeholder folder
        return CloneResult(folder=str(path), vault=vault_id, enrolled=True,
                           fingerprint=None, device=binding.device)
    got = pull(str(path), ui)
    return CloneResult(folder=str(path), vault=vault_id, enrolled=True, fingerprint=None,
                       device=binding.device, downloaded=got.downloaded, updated=got.updated,
                       deleted=got.deleted, conflicts=got.conflicts, skipped=got.skipped,
                       errors=got.errors, unreadable=got.unreadable, counts=got.counts)


def _add_member(transport: Transport, index: Index | None, ring: trust.Ring, rid: str,
                keys: chain.MemberKeys, name: str) -> chain.Commit:
    """An add commit on the head: same KEK, one more member with its own slot."""
    if rid in ring.view.members or rid in ring.view.removed or any(
            rid in c.members for c in [*ring.view.commits.values(),
                                       *ring.view.voided.values()]):
        raise UsageError(f"member id {rid} already exists in this vault (or a commit that "
                         "turned out void named it); refused: the new device enrols again "
                         "with a fresh request")
    members = {**ring.head.members, rid: keys}
    return trust.change(ring, transport, index, "add", members=members,
                        removed=dict(ring.head.removed), new_key=False, names={rid: name})
