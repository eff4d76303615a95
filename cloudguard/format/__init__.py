"""Format v2: every byte cloudguard writes to a remote (normative spec: docs/format.md).

Pure functions over bytes and streams. Randomness enters only through ``os.urandom`` in
the ``new_*`` helpers, so tests can pass fixed values to the inner functions and compare exact
bytes against tests/format/vectors.json. Every authentication or parse failure raises the same
:class:`IntegrityError`; callers add the object or file name.

One module a concept: ``blob`` (content blobs, packs, DEK wrapping), ``segment`` (manifest
segments), ``slots`` (key slots, sealed JSON, passphrase kits, codes); ``common`` holds what
they share. Callers use this package's names (``fmt.encrypt_blob``), so a test can replace
one here.
"""

from .blob import (
    BLOB_HEADER_SIZE,
    BLOB_MAGIC,
    DEK_WRAP_SIZE,
    PACK_HEADER_SIZE,
    PACK_MAGIC,
    BlobHeader,
    BlobInfo,
    BlobSealer,
    OpenBlob,
    Reader,
    blob_size,
    chunk_count,
    decrypt_blob,
    decrypt_blob_iter,
    decrypt_chunk,
    encrypt_blob,
    expect_end,
    new_dek,
    new_file_id,
    new_object_id,
    open_blob,
    open_blob_header,
    pack_header,
    padded_length,
    read_blob_stream,
    read_exact,
    unwrap_dek,
    wrap_dek,
)
from .common import (
    CHUNK_SIZE,
    FILE_ID_SIZE,
    KEY_SIZE,
    TAG_SIZE,
    VERSION,
    b64,
    padme,
    parse_json,
    unb64,
)
from .segment import (
    MAX_SEGMENT_PLAIN,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    SEGMENT_MIN_PLAIN,
    SEGMENT_MIN_SIZE,
    SIGNATURE_SIZE,
    open_segment,
    seal_segment,
    segment_head,
    verify_segment,
)
from .slots import (
    KIT_LOG_N,
    MAX_LOG_N,
    SCRYPT_P,
    SCRYPT_R,
    fingerprint,
    kek_commit,
    open_json,
    open_with_passphrase,
    public_bytes,
    seal_json,
    seal_with_passphrase,
    unwrap_from_slot,
    vault_code,
    wrap_to_recipient,
)

__all__ = [
    "BLOB_HEADER_SIZE", "BLOB_MAGIC", "CHUNK_SIZE", "DEK_WRAP_SIZE", "FILE_ID_SIZE", "KEY_SIZE",
    "KIT_LOG_N", "MAX_LOG_N", "MAX_SEGMENT_PLAIN", "PACK_HEADER_SIZE", "PACK_MAGIC", "SCRYPT_P",
    "SCRYPT_R", "SEGMENT_HEADER_SIZE", "SEGMENT_MAGIC", "SEGMENT_MIN_PLAIN", "SEGMENT_MIN_SIZE",
    "SIGNATURE_SIZE", "TAG_SIZE", "VERSION",
    "BlobHeader", "BlobInfo", "BlobSealer", "OpenBlob", "Reader",
    "b64", "blob_size", "chunk_count", "decrypt_blob", "decrypt_blob_iter", "decrypt_chunk",
    "encrypt_blob", "expect_end", "fingerprint", "kek_commit", "new_dek", "new_file_id",
    "new_object_id", "open_blob", "open_blob_header", "open_json", "open_segment",
    "open_with_passphrase", "pack_header", "padded_length", "padme", "parse_json",
    "public_bytes", "read_blob_stream", "read_exact", "seal_json", "seal_segment",
    "seal_with_passphrase", "segment_head", "unb64", "unwrap_dek", "unwrap_from_slot",
    "vault_code", "verify_segment", "wrap_dek", "wrap_to_recipient",
]
