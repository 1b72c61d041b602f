<?php
// payrelay's notifications, received by a PHP 8 game server: plain PHP, no framework.
// Run it with the built-in server:  GAME_SECRETS=whsec_... LEDGER=/var/lib/game/ledger.jsonl php -S 0.0.0.0:8080 handler.php
// (PAYRELAY_ENVIRONMENT=sandbox on a staging server, with the game's sandbox secrets.)
//
// 1. Verify the Standard Webhooks signature (HMAC-SHA256 of "webhook-id.webhook-timestamp.body",
//    any "v1,<base64>" in webhook-signature against any of our secrets, compared with hash_equals;
//    a timestamp within 5 minutes). A bad signature gets 401 and changes nothing.
//    Then check data.environment is the one this server serves (PAYRELAY_ENVIRONMENT,
//    production by default): a test payment never grants on a production server. The other
//    environment gets 400 and changes nothing.
// 2. Deduplicate by webhook-id: the ledger is our table, with webhook-id its unique key.
// 3. Grant on payment.succeeded, revoke on payment.refunded, each once (its row is the record).
// 4. Answer 2xx only after the write, and quickly (payrelay waits at most 10 s).
//
// The ledger is a JSON-lines file locked with flock so the example needs nothing installed;
// in a real game it is a database table with a unique key on webhook_id, written in the same
// transaction as the grant or the revoke.

const TOLERANCE = 300;

function verified(array $secrets, string $id, string $ts, string $body, string $header): bool {
    if ($id === '' || !ctype_digit($ts) || abs(time() - (int)$ts) > TOLERANCE) {
        return false;
    }
    foreach ($secrets as $secret) {
        $key = base64_decode(substr($secret, strlen('whsec_')), true);
        if ($key === false) {
            continue;
        }
        $expected = base64_encode(hash_hmac('sha256', "$id.$ts.$body", $key, true));
        foreach (explode(' ', $header) as $sig) {
            [$version, $value] = array_pad(explode(',', $sig, 2), 2, '');
            if ($version === 'v1' && hash_equals($expected, $value)) {
                return true;
            }
        }
    }
    return false;
}

function answer(int $code, string $reason = ''): void {
    http_response_code($code);
    header('Content-Type: application/json');
    echo json_encode(['ok' => $code < 300, 'reason' => $reason]);
}

if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    answer(405, 'use POST');
    return;
}
$secrets = array_values(array_filter(array_map('trim', explode(',', getenv('GAME_SECRETS') ?: ''))));
$environment = getenv('PAYRELAY_ENVIRONMENT') ?: 'production';
if ($environment !== 'production' && $environment !== 'sandbox') {
    answer(500, 'PAYRELAY_ENVIRONMENT must be production or sandbox'); // a misconfigured server grants nothing
    return;
}
$ledgerPath = getenv('LEDGER') ?: __DIR__ . '/ledger.jsonl';
$body = file_get_contents('php://input', false, null, 0, 1 << 20);
$id = $_SERVER['HTTP_WEBHOOK_ID'] ?? '';
if (!verified($secrets, $id, $_SERVER['HTTP_WEBHOOK_TIMESTAMP'] ?? '', $body, $_SERVER['HTTP_WEBHOOK_SIGNATURE'] ?? '')) {
    answer(401, 'bad signature');
    return;
}
$msg = json_decode($body, true);
if (!is_array($msg) || !isset($msg['type'], $msg['data']['order_id'])) {
    answer(400, 'not a payrelay notification');
    return;
}
if (($msg['data']['environment'] ?? '') !== $environment) {
    answer(400, 'environment ' . json_encode($msg['data']['environment'] ?? null) . " is not this server's ($environment)");
    return;
}

$ledger = fopen($ledgerPath, 'c+');
if ($ledger === false || !flock($ledger, LOCK_EX)) {
    answer(503, 'ledger unavailable'); // payrelay retries on its ladder
    return;
}
try {
    while (($line = fgets($ledger)) !== false) {
        $row = json_decode($line, true);
        if (($row['webhook_id'] ?? null) === $id) {
            answer(200, 'already processed'); // a repeat: granted or revoked before
            return;
        }
    }
    $data = $msg['data'];
    switch ($msg['type']) {
        case 'payment.succeeded':
            $row = ['webhook_id' => $id, 'kind' => 'grant', 'order_id' => $data['order_id'], 'amount_minor' => $data['amount_minor']];
            break;
        case 'payment.refunded':
            $row = ['webhook_id' => $id, 'kind' => 'revoke', 'order_id' => $data['order_id'],
                'refund_id' => $data['refund']['refund_id'] ?? '', 'amount_minor' => $data['refund']['amount_minor'] ?? 0];
            break;
        default:
            answer(200, 'type not handled'); // acknowledge what this server does not handle yet
            return;
    }
    fseek($ledger, 0, SEEK_END);
    fwrite($ledger, json_encode($row) . "\n");
    fflush($ledger);
    fsync($ledger);
} finally {
    flock($ledger, LOCK_UN);
    fclose($ledger);
}
answer(204);
