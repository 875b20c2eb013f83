DROP FUNCTION ordersync_record_success(text, uuid, uuid, text);
