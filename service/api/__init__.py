"""HTTP handlers only: parsing requests and rendering answers; the work happens elsewhere."""
