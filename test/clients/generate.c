// A leoam client in C with the NATS C client (cnats, Debian's libnats-dev): sends one
// request to leoam.v1.generate and prints the reply.
//
//   gcc -O1 -o generate test/clients/generate.c -lnats
//   ./generate nats://127.0.0.1:4222 '{"prompt":"Once upon a time","max_tokens":8}'
//
// Exit status: 0 with the reply JSON on stdout; 3 on an error reply (its JSON body on
// stdout, "error <Nats-Service-Error-Code>" on stderr); 2 when the connection or the
// request fails (no server, no responders, timeout); 1 on bad usage.
#include <stdio.h>

#include <nats/nats.h>

#define SUBJECT "leoam.v1.generate"
#define TIMEOUT_MS 120000

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s NATS_URL JSON_BODY\n", argv[0]);
        return 1;
    }
    const char *url = argv[1];
    const char *body = argv[2];

    natsConnection *nc = NULL;
    natsMsg *reply = NULL;
    const char *code = NULL;
    int len = 0;
    int rc = 0;

    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s != NATS_OK) {
        fprintf(stderr, "cannot connect to %s: %s\n", url, natsStatus_GetText(s));
        rc = 2;
        goto done;
    }

    s = natsConnection_RequestString(&reply, nc, SUBJECT, body, TIMEOUT_MS);
    if (s != NATS_OK) {
        // NATS_TIMEOUT, or NATS_NO_RESPONDERS when no leoam service is listening.
        fprintf(stderr, "request on %s failed: %s\n", SUBJECT, natsStatus_GetText(s));
        rc = 2;
        goto done;
    }

    len = natsMsg_GetDataLength(reply);
    if (len > 0 && fwrite(natsMsg_GetData(reply), 1, (size_t)len, stdout) != (size_t)len) {
        perror("stdout");
        rc = 2;
        goto done;
    }
    putchar('\n');

    s = natsMsgHeader_Get(reply, "Nats-Service-Error-Code", &code);
    if (s == NATS_OK) {
        fprintf(stderr, "error %s\n", code);
        rc = 3;
    } else if (s != NATS_NOT_FOUND) {
        fprintf(stderr, "cannot read the reply headers: %s\n", natsStatus_GetText(s));
        rc = 2;
    }

done:
    natsMsg_Destroy(reply);
    natsConnection_Destroy(nc);
    nats_Close();
    return rc;
}
