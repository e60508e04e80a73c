"""The messages of the e-commerce example, shared by every service."""

from __future__ import annotations

from flowkit import Command, Event, Message


class OrderPlaced(Event, correlate_by="order_id"):
    """An order was placed by a user (published by the order service).

    Its flow is named by its order id (``correlate_by``): ``flowkit trace o-2``
    finds everything that happened because order o-2 was placed.
    """

    order_id: str
    user_email: str
    seller_id: str
    items: list[str]
    total: float


class ConfirmationSent(Event):
    order_id: str
    email: str


class ShipmentPrepared(Event):
    order_id: str
    seller_id: str
    parcel_id: str


class PartnerAssigned(Event):
    order_id: str
    partner: str


class SellerAccepted(Event, correlate_by="order_id"):
    """The seller accepted an order (published by the seller service).

    The orchestrated saga waits for it after charging the payment; it finds
    the one of its order by ``order_id`` (``correlate_by``).
    """

    order_id: str
    seller_id: str


# -- commands, for the orchestrated version ----------------------------------


class Done(Message):
    """A generic acknowledgement carrying a reference."""

    reference: str


class SendConfirmation(Command[Done]):
    order_id: str
    user_email: str


class PrepareShipment(Command[Done]):
    order_id: str
    seller_id: str
    items: list[str]


class CancelShipment(Command[Done]):
    order_id: str
    seller_id: str


class AssignPartner(Command[Done]):
    order_id: str


class ReleasePartner(Command[Done]):
    order_id: str
