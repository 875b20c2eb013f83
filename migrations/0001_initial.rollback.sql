DROP TABLE operations;
DROP TABLE inbox;
DROP TABLE orders;
