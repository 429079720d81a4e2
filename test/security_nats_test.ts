/**
 * A real nats-server configured by the test: TLS with a test CA (certificates made here with
 * openssl; the server verifies client certificates), users with passwords and the run's
 * permissions (`runPermissions`). Plaintext, certificate-less and wrong-password clients are
 * refused; a `dpzo worker` with a wrong password cannot join; a client with worker permissions
 * can read the run's config but cannot publish a control message (step.update), a batch into
 * stage 0, or a ledger entry — the server refuses and nothing reaches the coordinator's side.
 */
import { strict as assert } from "node:assert";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { startNatsServer } from "../cluster/nats_server.ts";
import {
  connectOptions,
  isLoopbackUrl,
  localUsers,
  type NatsSecurity,
  securityProblem,
} from "../cluster/nats_security.ts";
import { encode, encodeControl, subjects } from "../cluster/protocol.ts";

import { lacks, ROOT } from "./fixtures.ts";
const RUN = "sec";

async function openssl(cwd: string, ...args: string[]) {
  const out = await new Deno.Command("openssl", { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
}

/** A CA, a server certificate for 127.0.0.1/localhost and a client certificate. */
async function makeCerts(dir: string) {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await openssl(
    dir,
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=dpzo test CA",
  );
  for (
    const [name, ext] of [
      ["server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"],
      ["client", "extendedKeyUsage=clientAuth"],
    ]
  ) {
    await openssl(
      dir,
      "req",
      ...ec,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
      "-subj",
      `/CN=${name}`,
    );
    await Deno.writeTextFile(`${dir}/${name}.ext`, ext + "\n");
    await openssl(
      dir,
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${name}.pem`,
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
    );
  }
  return {
    ca: `${dir}/ca.pem`,
    serverCert: `${dir}/server.pem`,
    serverKey: `${dir}/server.key`,
    clientCert: `${dir}/client.pem`,
    clientKey: `${dir}/client.key`,
  };
}

// A refused TLS handshake can end after the client has already given up (on a loaded machine
// the server's "bad certificate" alert arrives after the connect timeout); the node socket then
// reports it with no listener left, as an uncaught error. That alert is the refusal this file
// asserts, so it is not a failure of the module.
globalThis.addEventListener("error", (e) => {
  if (/fatal alert: (BadCertificate|CertificateRequired)/.test(String(e.error?.message))) {
    e.preventDefault();
  }
});

const refused = async (url: string, opts: Record<string, unknown>) => {
  try {
    const nc = await connect({ servers: url, reconnect: false, timeout: 3000, ...opts });
    await nc.close();
    return false;
  } catch {
    return true;
  }
};

Deno.test("security settings: loopback, TLS and plaintext refusal", () => {
  assert.ok(isLoopbackUrl("nats://127.0.0.1:4222"));
  assert.ok(isLoopbackUrl("localhost:4222"));
  assert.ok(!isLoopbackUrl("nats://10.0.0.1:4222,nats://127.0.0.1:4222"));
  assert.match(securityProblem("nats://10.0.0.1:4222", {})!, /without TLS/);
  assert.equal(securityProblem("nats://10.0.0.1:4222", { allowPlaintext: true }), null);
  assert.equal(securityProblem("tls://10.0.0.1:4222", {}), null);
  assert.equal(securityProblem("nats://10.0.0.1:4222", { tlsCa: "ca.pem" }), null);
  assert.match(securityProblem("nats://127.0.0.1:1", { tlsCert: "c.pem" })!, /go together/);
  const warnings: string[] = [];
  connectOptions("nats://10.0.0.1:4222", { allowPlaintext: true }, (l) => warnings.push(l));
  assert.match(warnings[0], /WARNING.*in clear/);
});

Deno.test({
  name: "TLS + credentials required; worker permissions cannot drive the model or the ledger",
  ignore: lacks("nats-server") || lacks("openssl"),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-sec-" });
    const certs = await makeCerts(dir);
    const users = localUsers(RUN, { stages: 2, groups: 1 });
    const server = await startNatsServer({
      storeDir: `${dir}/nats`,
      tls: { cert: certs.serverCert, key: certs.serverKey, ca: certs.ca, verify: true },
      users: [users.coordinator, users.worker],
    });
    const conns: NatsConnection[] = [];
    try {
      const { url } = server;
      assert.match(url, /^tls:\/\/127\.0\.0\.1:/);
      const tlsOf = (s: NatsSecurity) =>
        connectOptions(url, {
          tlsCa: certs.ca,
          tlsCert: certs.clientCert,
          tlsKey: certs.clientKey,
          ...s,
        });
      const as = async (s: NatsSecurity) => {
        const nc = await connect({ servers: url, reconnect: false, ...tlsOf(s) });
        conns.push(nc);
        return nc;
      };
      const coordinator = { user: "coordinator", password: users.coordinator.password };
      const worker = { user: "worker", password: users.worker.password };

      // Refused: no TLS, TLS without a client certificate, a wrong password, no user.
      assert.ok(
        await refused(url.replace("tls:", "nats:"), { user: "worker", pass: worker.password }),
      );
      assert.ok(
        await refused(url, { tls: { caFile: certs.ca }, user: "worker", pass: worker.password }),
      );
      assert.ok(await refused(url, tlsOf({ user: "worker", password: "wrong" })));
      assert.ok(await refused(url, tlsOf({})));

      // The coordinator sets up the run: config stream and ledger stream.
      const S = subjects(RUN);
      const c = await as(coordinator);
      const jsm = await jetstreamManager(c);
      await jsm.streams.add({ name: S.stream, subjects: [S.meta], max_msgs_per_subject: 1 });
      const ledger = { name: `${S.stream}-ledger`, subject: `dpzo.${RUN}.ledger` };
      await jsm.streams.add({ name: ledger.name, subjects: [ledger.subject] });
      await jetstream(c).publish(
        S.meta,
        encode(RUN, { config: { x: 1 }, plan: {} }, "coordinator"),
      );
      await jetstream(c).publish(ledger.subject, new TextEncoder().encode('{"step":1}\n'));
      const seen: string[] = [];
      for (const subj of [S.control, S.forward(0, 0), S.forward(0, 1), S.shutdown]) {
        c.subscribe(subj, { callback: (_e, m) => void seen.push(m.subject) });
      }
      await c.flush();

      // A worker reads the run's config and ledger.
      const w = await as(worker);
      const errors: string[] = [];
      (async () => {
        for await (const s of w.status()) if (s.type === "error") errors.push(String(s.error));
      })().catch(() => {});
      const wjsm = await jetstreamManager(w);
      const meta = await wjsm.streams.getMessage(S.stream, { last_by_subj: S.meta });
      assert.ok(meta && meta.data.byteLength > 0);
      assert.ok(await wjsm.streams.getMessage(ledger.name, { seq: 1 }));

      // It may publish activations into stage 1 ...
      w.publish(S.forward(0, 1), new Uint8Array([1]));
      // ... but not a step.update, a batch into stage 0, or a shutdown: the server refuses.
      w.publish(
        S.control,
        encodeControl(RUN, { type: "step.update", step: 1, coeff: 1, lr: 1, weight_decay: 0 }),
      );
      w.publish(S.forward(0, 0), new Uint8Array([1]));
      w.publish(S.shutdown, encode(RUN, {}, "coordinator"));
      // Nor a ledger entry or a new config, through JetStream or plain publish.
      await assert.rejects(() =>
        jetstream(w).publish(ledger.subject, new Uint8Array([1]), { timeout: 2000 })
      );
      w.publish(ledger.subject, new TextEncoder().encode('{"step":2}\n'));
      w.publish(S.meta, new Uint8Array([1]));
      await assert.rejects(() => wjsm.streams.purge(ledger.name));
      await assert.rejects(() => wjsm.streams.delete(S.stream));
      await w.flush();
      await new Promise((r) => setTimeout(r, 500));
      await c.flush();

      assert.deepEqual(seen, [S.forward(0, 1)]);
      assert.equal((await jsm.streams.info(ledger.name)).state.messages, 1);
      assert.equal((await jsm.streams.info(S.stream)).state.messages, 1);
      assert.ok(
        errors.some((e) => /permission/i.test(e) && e.includes(S.control)),
        `no permission error for ${S.control}: ${errors.join("; ")}`,
      );

      // A `dpzo worker` with a wrong password cannot join (and says why, quickly).
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "task",
          "--quiet",
          "dpzo",
          "worker",
          "--nats",
          url,
          "--run",
          RUN,
          "--nats-tls-ca",
          certs.ca,
          "--nats-tls-cert",
          certs.clientCert,
          "--nats-tls-key",
          certs.clientKey,
          "--nats-user",
          "worker",
        ],
        cwd: ROOT,
        env: { DPZO_NATS_PASSWORD: "wrong" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.notEqual(out.code, 0, stderr);
      assert.match(stderr, /refused this worker|authori[sz]ation/i);
    } finally {
      for (const nc of conns) await nc.close().catch(() => {});
      await server.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
