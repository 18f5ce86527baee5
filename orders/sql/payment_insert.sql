INSERT INTO "payments_payment" (order_id, user_id, amount, status, created_at) VALUES (%s, %s, %s, %s, now()) RETURNING id
