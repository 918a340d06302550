// Certificates, signatures and receipts, checked in the browser (WebCrypto, and BigInt
// ECDSA for the one signature WebCrypto cannot check: a node's signature over a Merkle
// root, which signs the 32-byte root itself as the SHA-256 digest, "prehashed").
// The algorithm is ledger/receipt.py's; docs/console.md says what a receipt proves.

import { decode as cborDecode, encode as cborEncode, Tagged } from "./cbor.js";

export const PEM_BYTES_MAX = 64 * 1024;
export const RECEIPT_BYTES_MAX = 1024 * 1024;
export const PROOF_STEPS_MAX = 64;
export const ENDORSEMENTS_MAX = 16;

export class VerifyError extends Error {
  constructor(check, message) {
    super(message);
    this.check = check;
  }
}

// ------------------------------------------------------------------ bytes
export function hexToBytes(hex, what = "hex") {
  if (typeof hex !== "string" || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new VerifyError("format", `${what} is not hexadecimal`);
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function base64ToBytes(text, what = "base64") {
  let binary;
  try {
    binary = atob(text.replace(/\s+/g, ""));
  } catch {
    throw new VerifyError("format", `${what} is not base64`);
  }
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

export function pemBlocks(text, label) {
  if (text.length > PEM_BYTES_MAX) throw new VerifyError("format", "PEM text is too large");
  const re = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`, "g");
  return Array.from(text.matchAll(re), (m) => base64ToBytes(m[1], label));
}

// ------------------------------------------------------------------ DER
function derItem(bytes, pos) {
  if (pos + 2 > bytes.length) throw new VerifyError("format", "DER ends early");
  const tag = bytes[pos];
  let len = bytes[pos + 1];
  let header = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 3 || pos + 2 + n > bytes.length) throw new VerifyError("format", "bad DER length");
    len = 0;
    for (let i = 0; i < n; i++) len = (len << 8) | bytes[pos + 2 + i];
    header += n;
  }
  const start = pos + header;
  const end = start + len;
  if (end > bytes.length) throw new VerifyError("format", "DER item longer than its bytes");
  return { tag, start, end, pos, raw: bytes.subarray(pos, end), body: bytes.subarray(start, end) };
}

function derChildren(bytes, item) {
  const out = [];
  for (let pos = item.start; pos < item.end; ) {
    const child = derItem(bytes, pos);
    out.push(child);
    pos = child.end;
  }
  return out;
}

const OID_CURVES = {
  "2a8648ce3d030107": "P-256",
  "2b81040022": "P-384",
  "2b81040023": "P-521",
};
const OID_SIG_HASH = {
  "2a8648ce3d040302": "SHA-256",
  "2a8648ce3d040303": "SHA-384",
  "2a8648ce3d040304": "SHA-512",
};
const OID_CN = "550403";

function derTime(item) {
  const text = new TextDecoder().decode(item.body);
  const m = /^(\d{2,4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
  if (!m) throw new VerifyError("format", "bad certificate time");
  let year = Number(m[1]);
  if (m[1].length === 2) year += year < 50 ? 2000 : 1900;
  return new Date(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

function commonName(bytes, name) {
  for (const set of derChildren(bytes, name)) {
    for (const attr of derChildren(bytes, set)) {
      const [oid, value] = derChildren(bytes, attr);
      if (bytesToHex(oid.body) === OID_CN) return new TextDecoder().decode(value.body);
    }
  }
  return "";
}

// An X.509 certificate's parts: what endorsement checks and the console's views need.
export function parseCertificate(der) {
  const cert = derItem(der, 0);
  const [tbs, sigAlg, sigValue] = derChildren(der, cert);
  if (!tbs || !sigAlg || !sigValue || sigValue.tag !== 0x03) throw new VerifyError("format", "not a certificate");
  const fields = derChildren(der, tbs);
  const offset = fields[0].tag === 0xa0 ? 1 : 0;
  const issuer = fields[offset + 2];
  const validity = derChildren(der, fields[offset + 3]);
  const subject = fields[offset + 4];
  const spki = fields[offset + 5];
  const [algorithm, point] = derChildren(der, spki);
  const [, curveOid] = derChildren(der, algorithm);
  const hash = OID_SIG_HASH[bytesToHex(derChildren(der, sigAlg)[0].body)];
  return {
    der,
    tbs: tbs.raw,
    signatureHash: hash || null,
    signature: sigValue.body.subarray(1),
    notBefore: derTime(validity[0]),
    notAfter: derTime(validity[1]),
    issuerCN: commonName(der, issuer),
    subjectCN: commonName(der, subject),
    spki: spki.raw,
    curve: curveOid ? OID_CURVES[bytesToHex(curveOid.body)] || null : null,
    point: point.body.subarray(1),
  };
}

export function parsePemCertificate(pem, what = "certificate") {
  const blocks = pemBlocks(pem, "CERTIFICATE");
  if (blocks.length !== 1) throw new VerifyError("format", `${what}: expected one PEM certificate`);
  return parseCertificate(blocks[0]);
}

// DER ECDSA signature → r and s as BigInts.
export function derSignature(sig) {
  const seq = derItem(sig, 0);
  if (seq.tag !== 0x30 || seq.end !== sig.length) throw new VerifyError("format", "bad DER signature");
  const [r, s] = derChildren(sig, seq);
  if (!r || !s || r.tag !== 0x02 || s.tag !== 0x02) throw new VerifyError("format", "bad DER signature");
  return [BigInt("0x" + (bytesToHex(r.body) || "0")), BigInt("0x" + (bytesToHex(s.body) || "0"))];
}

function fieldBytes(curve) {
  return { "P-256": 32, "P-384": 48, "P-521": 66 }[curve];
}

function toFixed(n, size) {
  return hexToBytes(n.toString(16).padStart(size * 2, "0"));
}

// ------------------------------------------------------------------ ECDSA over P-256/P-384
const CURVES = {
  "P-256": {
    p: 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn,
    b: 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn,
    n: 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n,
    gx: 0x6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296n,
    gy: 0x4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5n,
  },
  "P-384": {
    p: 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffffn,
    b: 0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aefn,
    n: 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n,
    gx: 0xaa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7n,
    gy: 0x3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5fn,
  },
};

function mod(a, m) {
  const r = a % m;
  return r < 0n ? r + m : r;
}

function inverse(a, m) {
  let [r0, r1, t0, t1] = [mod(a, m), m, 1n, 0n];
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [t0, t1] = [t1, t0 - q * t1];
  }
  if (r0 !== 1n) throw new VerifyError("signature", "value has no inverse");
  return mod(t0, m);
}

// Jacobian coordinates (X, Y, Z), a = -3; null is the point at infinity.
function double(P, c) {
  if (P === null) return null;
  const [X, Y, Z] = P;
  if (Y === 0n) return null;
  const p = c.p;
  const Z2 = mod(Z * Z, p);
  const M = mod(3n * (X - Z2) * (X + Z2), p);
  const Y2 = mod(Y * Y, p);
  const S = mod(4n * X * Y2, p);
  const X3 = mod(M * M - 2n * S, p);
  const Y3 = mod(M * (S - X3) - 8n * Y2 * Y2, p);
  return [X3, Y3, mod(2n * Y * Z, p)];
}

function add(P, Q, c) {
  if (P === null) return Q;
  if (Q === null) return P;
  const p = c.p;
  const [X1, Y1, Z1] = P;
  const [X2, Y2, Z2] = Q;
  const Z1s = mod(Z1 * Z1, p);
  const Z2s = mod(Z2 * Z2, p);
  const U1 = mod(X1 * Z2s, p);
  const U2 = mod(X2 * Z1s, p);
  const S1 = mod(Y1 * Z2s * Z2, p);
  const S2 = mod(Y2 * Z1s * Z1, p);
  if (U1 === U2) return S1 === S2 ? double(P, c) : null;
  const H = mod(U2 - U1, p);
  const R = mod(S2 - S1, p);
  const H2 = mod(H * H, p);
  const H3 = mod(H2 * H, p);
  const X3 = mod(R * R - H3 - 2n * U1 * H2, p);
  const Y3 = mod(R * (U1 * H2 - X3) - S1 * H3, p);
  return [X3, Y3, mod(H * Z1 * Z2, p)];
}

function affineX(P, c) {
  const zi = inverse(P[2], c.p);
  return mod(P[0] * zi * zi, c.p);
}

// ECDSA verification where `digest` is the hash itself (what `Prehashed(SHA256)` signs).
export function verifyPrehashed(curveName, point, digest, r, s) {
  const c = CURVES[curveName];
  if (!c) throw new VerifyError("signature", `curve ${curveName} is not supported here`);
  const size = fieldBytes(curveName);
  if (point.length !== 1 + 2 * size || point[0] !== 4) throw new VerifyError("format", "bad public key point");
  const qx = BigInt("0x" + bytesToHex(point.subarray(1, 1 + size)));
  const qy = BigInt("0x" + bytesToHex(point.subarray(1 + size)));
  if (mod(qy * qy - (qx * qx * qx - 3n * qx + c.b), c.p) !== 0n) throw new VerifyError("format", "public key is not on the curve");
  if (r < 1n || r >= c.n || s < 1n || s >= c.n) return false;
  let e = BigInt("0x" + bytesToHex(digest));
  const nBits = c.n.toString(2).length;
  if (digest.length * 8 > nBits) e >>= BigInt(digest.length * 8 - nBits);
  const w = inverse(s, c.n);
  const u1 = mod(e * w, c.n);
  const u2 = mod(r * w, c.n);
  const G = [c.gx, c.gy, 1n];
  const Q = [qx, qy, 1n];
  const GQ = add(G, Q, c);
  let acc = null;
  for (let bit = BigInt(nBits) - 1n; bit >= 0n; bit--) {
    acc = double(acc, c);
    const a = (u1 >> bit) & 1n;
    const b = (u2 >> bit) & 1n;
    if (a && b) acc = add(acc, GQ, c);
    else if (a) acc = add(acc, G, c);
    else if (b) acc = add(acc, Q, c);
  }
  if (acc === null) return false;
  return mod(affineX(acc, c), c.n) === r;
}

async function importVerifyKey(cert) {
  if (!cert.curve) throw new VerifyError("format", "only ECDSA certificates are supported");
  return crypto.subtle.importKey("spki", cert.spki, { name: "ECDSA", namedCurve: cert.curve }, false, ["verify"]);
}

// Is `endorsee` signed by `endorser`'s key (X.509 signature over the TBS)?
export async function isEndorsedBy(endorsee, endorser) {
  if (!endorsee.signatureHash) return false;
  const [r, s] = derSignature(endorsee.signature);
  const size = fieldBytes(endorser.curve);
  const raw = concat(toFixed(r, size), toFixed(s, size));
  const key = await importVerifyKey(endorser);
  return crypto.subtle.verify({ name: "ECDSA", hash: endorsee.signatureHash }, key, raw, endorsee.tbs);
}

// ------------------------------------------------------------------ receipts
export async function leafDigest(wsd, commitEvidence, claims) {
  const evidence = await sha256(new TextEncoder().encode(commitEvidence));
  return sha256(concat(wsd, evidence, claims));
}

export async function foldProof(leaf, steps) {
  let acc = leaf;
  for (const [siblingIsLeft, sibling] of steps) {
    acc = await sha256(siblingIsLeft ? concat(sibling, acc) : concat(acc, sibling));
  }
  return acc;
}

function digestHex(value, name) {
  const bytes = hexToBytes(value, name);
  if (bytes.length !== 32) throw new VerifyError("format", `${name} is not 32 bytes`);
  return bytes;
}

// A JSON receipt, CCF's shape: returns what it proves, or throws VerifyError naming the check.
export async function verifyJsonReceipt(receipt, serviceCert) {
  if (typeof receipt !== "object" || receipt === null) throw new VerifyError("format", "a receipt is a JSON object");
  const components = receipt.leaf_components;
  if (!components || typeof components.commit_evidence !== "string") {
    throw new VerifyError("format", "leaf_components (write_set_digest, commit_evidence, claims_digest) are missing");
  }
  const wsd = digestHex(components.write_set_digest, "write_set_digest");
  const claims = digestHex(components.claims_digest, "claims_digest");
  if (!Array.isArray(receipt.proof) || receipt.proof.length > PROOF_STEPS_MAX) {
    throw new VerifyError("format", "proof must be a list of steps");
  }
  const steps = receipt.proof.map((step) => {
    const keys = Object.keys(step || {});
    if (keys.length !== 1 || !["left", "right"].includes(keys[0])) throw new VerifyError("format", "a proof step is {left: hex} or {right: hex}");
    return [keys[0] === "left", digestHex(step[keys[0]], "proof step")];
  });
  const nodeCert = parsePemCertificate(String(receipt.cert || ""), "cert");
  const endorsements = receipt.service_endorsements || [];
  if (!Array.isArray(endorsements) || endorsements.length > ENDORSEMENTS_MAX) throw new VerifyError("format", "service_endorsements must be a short list");
  const chain = [nodeCert, ...endorsements.map((e) => parsePemCertificate(e, "endorsement")), serviceCert];

  const nodeId = bytesToHex(await sha256(nodeCert.spki));
  if (String(receipt.node_id || "").toLowerCase() !== nodeId) {
    throw new VerifyError("node_id", "node_id is not the hash of the receipt certificate's public key");
  }
  const leaf = await leafDigest(wsd, components.commit_evidence, claims);
  const root = await foldProof(leaf, steps);
  const [r, s] = derSignature(base64ToBytes(String(receipt.signature || ""), "signature"));
  if (!verifyPrehashed(nodeCert.curve, nodeCert.point, root, r, s)) {
    throw new VerifyError("signature", "the node's signature does not verify over the recomputed root");
  }
  for (let i = 0; i < chain.length - 1; i++) {
    if (!(await isEndorsedBy(chain[i], chain[i + 1]))) {
      throw new VerifyError("endorsement", i === chain.length - 2
        ? "the signing node's certificate is not endorsed by this service certificate"
        : "a service endorsement in the receipt does not verify");
    }
  }
  const txid = /^ce:(\d+\.\d+):/.exec(components.commit_evidence);
  return {
    kind: "JSON",
    txid: txid ? txid[1] : null,
    leaf: bytesToHex(leaf),
    root: bytesToHex(root),
    signer: `node ${nodeId}`,
    writeSetDigest: components.write_set_digest,
    claimsDigest: components.claims_digest,
  };
}

// A COSE receipt: the service's COSE_Sign1 over the root, proofs in unprotected header 396.
export async function verifyCoseReceipt(bytes, serviceCert) {
  if (bytes.length > RECEIPT_BYTES_MAX) throw new VerifyError("format", "receipt is too large");
  let message;
  try {
    message = cborDecode(bytes);
  } catch (e) {
    throw new VerifyError("format", `not a COSE receipt: ${e.message}`);
  }
  if (!(message instanceof Tagged) || message.tag !== 18 || !Array.isArray(message.value) || message.value.length !== 4) {
    throw new VerifyError("format", "not a COSE_Sign1 message");
  }
  const [protectedBytes, unprotected, , signature] = message.value;
  const header = cborDecode(protectedBytes, { allowedTags: [] });
  const kid = header.get(4);
  const expectedKid = bytesToHex(await sha256(serviceCert.spki));
  if (!(kid instanceof Uint8Array) || new TextDecoder().decode(kid) !== expectedKid) {
    throw new VerifyError("kid", "the receipt's kid is not this service certificate's key");
  }
  if (header.get(395) !== 2) throw new VerifyError("format", "vds must be CCF_LEDGER_SHA256 (2)");
  const hash = { [-7]: "SHA-256", [-35]: "SHA-384", [-36]: "SHA-512" }[header.get(1)];
  if (!hash) throw new VerifyError("format", "unsupported COSE algorithm");
  const vdp = unprotected instanceof Map ? unprotected.get(396) : null;
  const proofs = vdp instanceof Map ? vdp.get(-1) : null;
  if (!Array.isArray(proofs) || proofs.length < 1 || proofs.length > 16) throw new VerifyError("format", "the receipt has no inclusion proof");
  const key = await importVerifyKey(serviceCert);
  const results = [];
  for (const encoded of proofs) {
    const proof = cborDecode(encoded, { allowedTags: [] });
    const leafParts = proof.get(1);
    const path = proof.get(2);
    if (!Array.isArray(leafParts) || leafParts.length !== 3 || !Array.isArray(path) || path.length > PROOF_STEPS_MAX) {
      throw new VerifyError("format", "malformed inclusion proof");
    }
    const [wsd, evidence, claims] = leafParts;
    if (!(wsd instanceof Uint8Array) || wsd.length !== 32 || typeof evidence !== "string" || !(claims instanceof Uint8Array) || claims.length !== 32) {
      throw new VerifyError("format", "malformed leaf in the inclusion proof");
    }
    const steps = path.map((step) => {
      if (!Array.isArray(step) || typeof step[0] !== "boolean" || !(step[1] instanceof Uint8Array) || step[1].length !== 32) {
        throw new VerifyError("format", "malformed proof step");
      }
      return [step[0], step[1]];
    });
    const leaf = await leafDigest(wsd, evidence, claims);
    const root = await foldProof(leaf, steps);
    const toBeSigned = cborEncode(["Signature1", protectedBytes, new Uint8Array(0), root]);
    if (!(await crypto.subtle.verify({ name: "ECDSA", hash }, key, signature, toBeSigned))) {
      throw new VerifyError("signature", "the service's signature does not verify over the recomputed root");
    }
    const txid = /^ce:(\d+\.\d+):/.exec(evidence);
    results.push({ txid: txid ? txid[1] : null, leaf: bytesToHex(leaf), root: bytesToHex(root), writeSetDigest: bytesToHex(wsd), claimsDigest: bytesToHex(claims) });
  }
  const ccf = header.get("ccf.v1");
  return {
    kind: "COSE",
    ...results[0],
    signedTxid: ccf instanceof Map ? ccf.get("txid") : null,
    signer: "the service key",
  };
}

export async function verifyReceipt(input, serviceCertPem) {
  const serviceCert = parsePemCertificate(serviceCertPem, "service certificate");
  if (input instanceof Uint8Array) {
    const text = new TextDecoder().decode(input).trim();
    if (!text.startsWith("{")) return verifyCoseReceipt(input, serviceCert);
    input = text;
  }
  const text = String(input).trim();
  if (text.startsWith("{")) {
    let doc;
    try {
      doc = JSON.parse(text);
    } catch {
      throw new VerifyError("format", "the receipt is not valid JSON");
    }
    return verifyJsonReceipt(doc, serviceCert);
  }
  // Pasted COSE receipts are accepted as hex or base64 text.
  const bytes = /^[0-9a-fA-F\s]+$/.test(text) ? hexToBytes(text.replace(/\s+/g, ""), "receipt") : base64ToBytes(text, "receipt");
  return verifyCoseReceipt(bytes, serviceCert);
}

// ------------------------------------------------------------------ member ballots
export async function importSigningKey(pem) {
  const blocks = pemBlocks(pem, "PRIVATE KEY");
  if (blocks.length !== 1) throw new VerifyError("format", "expected one PKCS#8 'PRIVATE KEY' PEM (as charter keygen writes)");
  for (const curve of ["P-384", "P-256", "P-521"]) {
    try {
      const key = await crypto.subtle.importKey("pkcs8", blocks[0], { name: "ECDSA", namedCurve: curve }, false, ["sign"]);
      return { key, curve };
    } catch {
      // try the next curve
    }
  }
  throw new VerifyError("format", "the key is not an ECDSA P-256, P-384 or P-521 key");
}

const COSE_ALG = { "P-256": [-7, "SHA-256"], "P-384": [-35, "SHA-384"], "P-521": [-36, "SHA-512"] };

// A tagged COSE_Sign1 governance request, with the protected header in the order the CLI
// (client/member.py) and CCF's ccf_cose_sign1 write it: alg, kid, type, proposal id, created_at.
export async function governanceEnvelope({ key, curve }, memberId, msgType, payload, { proposalId = null, createdAt = null } = {}) {
  if (!/^[0-9a-f]{64}$/.test(memberId)) throw new VerifyError("format", "member id is 64 lowercase hex digits");
  const [alg, hash] = COSE_ALG[curve];
  const header = new Map();
  header.set(1, alg);
  header.set(4, new TextEncoder().encode(memberId));
  header.set("ccf.gov.msg.type", msgType);
  if (proposalId !== null) header.set("ccf.gov.msg.proposal_id", proposalId);
  header.set("ccf.gov.msg.created_at", createdAt === null ? Math.floor(Date.now() / 1000) : createdAt);
  const protectedBytes = cborEncode(header);
  const toBeSigned = cborEncode(["Signature1", protectedBytes, new Uint8Array(0), payload]);
  const signature = new Uint8Array(await crypto.subtle.sign({ name: "ECDSA", hash }, key, toBeSigned));
  return cborEncode(new Tagged(18, [protectedBytes, new Map(), payload, signature]));
}

export async function certificateId(pem) {
  const blocks = pemBlocks(pem, "CERTIFICATE");
  if (blocks.length !== 1) throw new VerifyError("format", "expected one PEM certificate");
  return bytesToHex(await sha256(blocks[0]));
}
