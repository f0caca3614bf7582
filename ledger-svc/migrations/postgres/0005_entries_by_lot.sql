-- Finding the transaction that booked a lot (a repeated grant key answers the first one).
CREATE INDEX entries_by_lot ON entries (merchant_id, lot_id);
