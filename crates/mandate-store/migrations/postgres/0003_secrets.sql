-- Brokered secrets, sealed (XChaCha20-Poly1305) under the key-encryption key; never in clear.
CREATE TABLE secrets (
    name        TEXT COLLATE "C" PRIMARY KEY,
    version     BIGINT NOT NULL,
    nonce       TEXT NOT NULL,
    ciphertext  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
