DROP INDEX inbox_order;
DROP TABLE outbox;
